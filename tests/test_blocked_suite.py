"""The existing parity suites, again with every model on `blocked` attention (a child process
with $JAXEMBED_ATTENTION=blocked): MiniLM vs sentence-transformers, CLIP/SigLIP vs
transformers give the same embeddings (the server runs the same service: one path).
(Decoders on `blocked` vs `xla`: tests/test_attention.py.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import run_pytest_in_child

ROOT = Path(__file__).resolve().parents[1]
SUITES = [
    "tests/test_parity_minilm.py",
    "tests/test_clip.py",
]


def test_parity_suites_pass_with_blocked_attention():
    env = {**os.environ, "JAXEMBED_ATTENTION": "blocked"}
    probe = subprocess.run(  # the variable really selects the implementation that runs
        [
            sys.executable,
            "-c",
            "from jaxembed.api import Embedder;"
            "e = Embedder.from_pretrained(compile_cache_dir=False); e.embed(['probe']);"
            "print(sorted(set(e.runner.attention_used.values())))",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert probe.stdout.strip().splitlines()[-1] == "['blocked']", probe.stdout + probe.stderr
    run_pytest_in_child(SUITES, env)
