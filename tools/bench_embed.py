"""In-process throughput: jaxembed `Embedder.embed` vs sentence-transformers, same texts, same run.

Also measures warm-up (compiling every bucket) in fresh processes: once with
an empty compile cache (cold) and once more with the cache it filled (restart).

    python -m tools.bench_embed --passages 1024 --repeats 3 --out tools/results/embed.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

from jaxembed.cli import add_attention_option


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def write_results(path: str, results: dict) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(results, f, indent=2)


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def measure_warmup(cache_dir: str, model: str | None, token_budget: int | None) -> dict:
    code = (
        "import json,sys,time;from jaxembed.api import Embedder;"
        "t=time.perf_counter();"
        f"e=Embedder.from_pretrained({model!r}, compile_cache_dir={cache_dir!r}, token_budget={token_budget!r});"
        "load=time.perf_counter()-t;w=e.runner.warmup();"
        "print(json.dumps({'load_s':load,'warmup_s':w,'buckets':len(e.grid.buckets()),"
        "'source':e.model.source_format}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passages", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default=None, help="model spec (default: embedded MiniLM)")
    parser.add_argument("--token-budget", type=int, nargs="*", default=[None])
    parser.add_argument("--dtype", default=None)
    add_attention_option(parser)
    parser.add_argument(
        "--skip-st", action="store_true", help="skip the sentence-transformers baseline"
    )
    parser.add_argument("--skip-warmup", action="store_true")
    parser.add_argument("--out", default=None, help="write results as JSON here")
    return parser.parse_args()


def main() -> None:
    args = parse_args()

    from jaxembed.api import Embedder
    from tests.texts import passages

    texts = passages(args.passages)
    results: dict = {
        "date": time.strftime("%Y-%m-%d"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "passages": len(texts),
        "runs": [],
    }
    reference = None
    for budget in args.token_budget:
        embedder = Embedder.from_pretrained(
            args.model, dtype=args.dtype, token_budget=budget, attention=args.attention
        )
        tokens = sum(len(t) for t in embedder.tokenize(texts, truncate=True))
        results["tokens"] = tokens
        embedder.embed(texts, truncate=True)  # compile the buckets this workload uses
        seconds = best_of(lambda e=embedder: e.embed(texts, truncate=True), args.repeats)
        ours = embedder.embed(texts, truncate=True)
        run = {
            "engine": "jaxembed Embedder.embed",
            "token_budget": embedder.grid.token_budget,
            "dtype": str(embedder.model.dtype),
            "attention": args.attention,
            "seconds": seconds,
            "texts_per_s": len(texts) / seconds,
            "tokens_per_s": tokens / seconds,
        }
        results["runs"].append(run)
        print(json.dumps(run), flush=True)
    if not args.skip_st:
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(os.cpu_count() or 1)
        st = SentenceTransformer(str(embedder.model.model_dir), device="cpu")
        st.encode(texts[:64], batch_size=32)
        seconds = best_of(lambda: st.encode(texts, batch_size=32), args.repeats)
        reference = st.encode(texts, batch_size=32)
        run = {
            "engine": "sentence-transformers (torch CPU) encode, batch 32",
            "seconds": seconds,
            "texts_per_s": len(texts) / seconds,
            "tokens_per_s": tokens / seconds,
        }
        results["runs"].append(run)
        cos = (
            (ours * reference).sum(1)
            / np.linalg.norm(ours, axis=1)
            / np.linalg.norm(reference, axis=1)
        )
        results["min_cosine_vs_st"] = float(cos.min())
        print(json.dumps(run), flush=True)
    if not args.skip_warmup:
        from jaxembed.weights.convert import convert

        with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as converted:
            results["warmup_cold"] = measure_warmup(cache, args.model, args.token_budget[0])
            results["warmup_cached"] = measure_warmup(cache, args.model, args.token_budget[0])
            # The same model restored from a converted Orbax checkpoint (load time of that path).
            convert(embedder.model.model_dir, converted, show_progress=False)
            results["warmup_cached_orbax"] = measure_warmup(cache, converted, args.token_budget[0])
        keys = ("warmup_cold", "warmup_cached", "warmup_cached_orbax")
        print(json.dumps({k: results[k] for k in keys}), flush=True)
    if args.out:
        write_results(args.out, results)


if __name__ == "__main__":
    main()
