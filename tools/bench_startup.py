"""Seconds from `jaxembed serve` to /ready 200, with an empty and with a warm compile cache
(the issue's CPU goals for MiniLM: ≤ 12 s empty, ≤ 4 s warm), each in fresh processes.

    python -m tools.bench_startup [--model all-MiniLM-L6-v2] [--repeats 3] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path

from tools.bench_embed import cpu_model, write_results
from tools.hostpath import Spawned


def one_start(model: str, cache: Path, extra: list[str]) -> dict:
    argv = [sys.executable, "-m", "jaxembed.cli", "serve", "--port", "{port}", "--model", model]
    server = Spawned([*argv, "--compile-cache", str(cache), *extra])
    try:  # the rest of the grid compiles in the background
        grid_s = server.wait_for_grid()
        log = server.log()
    finally:
        server.stop()
    ready = re.search(r"ready: \d+ models?, (\d+) buckets? compiled in ([\d.]+) s", log)
    summary = re.search(r"(\d+) from the compile cache, (\d+) compiled", log)
    return {
        "ready_s": round(server.ready_seconds, 2),
        "whole_grid_s": round(grid_s, 2),
        "ready_programs": int(ready.group(1)) if ready else None,
        "cache_hits": int(summary.group(1)) if summary else None,
        "compiled": int(summary.group(2)) if summary else None,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="all-MiniLM-L6-v2")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--serve-args", default="", help="extra `jaxembed serve` options")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    extra = args.serve_args.split()
    empty, warm = [], []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="jaxembed-cc-") as cache:
            empty.append(one_start(args.model, Path(cache), extra))
            warm.append(one_start(args.model, Path(cache), extra))
        print(json.dumps({"empty": empty[-1], "warm": warm[-1]}), flush=True)
    results = {
        "tool": "bench_startup",
        "machine": cpu_model(),
        "model": args.model,
        "empty_cache": empty,
        "warm_cache": warm,
        "best_empty_s": min(r["ready_s"] for r in empty),
        "best_warm_s": min(r["ready_s"] for r in warm),
    }
    print(json.dumps({k: results[k] for k in ("best_empty_s", "best_warm_s")}))
    if args.out:
        write_results(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
