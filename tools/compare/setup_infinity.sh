#!/usr/bin/env bash
# Infinity 0.0.78 (torch CPU) in its own venv, for side-by-side runs with jaxembed.
# Pinned: torch 2.13.0 (the CPU wheel; an unpinned torch pulls a CUDA build) and
# transformers<5 (Infinity 0.0.78 predates transformers 5).
set -euo pipefail
cd "$(dirname "$0")"
VENV=${INFINITY_VENV:-.venv-infinity}
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check \
  "infinity-emb[server,torch]==0.0.78" "torch==2.13.0" "transformers<5"
"$VENV/bin/infinity_emb" --help >/dev/null
echo "Infinity ready: $VENV/bin/infinity_emb"
