"""How close the CPU forward gets to the machine's compute limit, and what bfloat16 buys.

1. GEMM peak: the best of jitted square float32 (and bfloat16) matmuls, as GFLOP/s.
2. Model FLOPs per token for all-MiniLM-L6-v2: 2 x non-embedding parameters (every weight is one
   multiply-add per token) plus attention, 4 x layers x hidden x sequence length (QK^T and PV).
3. In-process `Embedder.embed` over 1,024 passages in float32 (packed, the default, and
   unpacked) and bfloat16: tokens/s, achieved
   GFLOP/s counting real tokens (padding is waste) and padded tokens, the fraction of the peak,
   and bfloat16's accuracy against float32 (min/mean cosine).

    python -m tools.roofline --out tools/results/roofline.json
"""

from __future__ import annotations

import argparse
import json
import math
import time

import jax
import jax.numpy as jnp
import numpy as np


def gemm_peak(dtype, sizes=(512, 1024, 2048), repeats=5) -> dict:
    best = {}
    for n in sizes:
        a = jnp.ones((n, n), dtype)
        f = jax.jit(lambda x, y: x @ y)
        f(a, a).block_until_ready()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            f(a, a).block_until_ready()
            times.append(time.perf_counter() - start)
        best[n] = 2 * n**3 / min(times) / 1e9
    return {"gflops_by_size": {str(k): round(v, 1) for k, v in best.items()},
            "peak_gflops": round(max(best.values()), 1)}  # fmt: skip


def flops_per_token(embedder, mean_seq: float) -> float:
    cfg = embedder.model.config
    params = jax.tree_util.tree_leaves_with_path(embedder.model.params)
    non_embedding = sum(
        math.prod(leaf.shape)
        for path, leaf in params
        if "embeddings" not in jax.tree_util.keystr(path)
    )
    return 2 * non_embedding + 4 * cfg.num_layers * cfg.hidden_size * mean_seq


def measure(
    dtype: str, texts: list[str], repeats: int = 2, packing: bool = True
) -> tuple[dict, np.ndarray]:
    from jaxembed.api import Embedder

    embedder = Embedder.from_pretrained(None, dtype=dtype, packing=packing)
    tokens = embedder.tokenize(texts, truncate=True)
    lengths = [len(t) for t in tokens]
    vectors = embedder.embed_token_lists(tokens)  # compiles the buckets used
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        embedder.embed_token_lists(tokens)
        best = min(best, time.perf_counter() - start)
    padded = sum(p.bucket.batch * p.bucket.seq for p in embedder.plan(tokens))
    real = sum(lengths)
    per_token = flops_per_token(embedder, float(np.mean(lengths)))
    return {
        "texts_per_s": round(len(texts) / best, 1),
        "tokens_per_s": round(real / best, 0),
        "fill": round(real / padded, 3),
        "gflops_real_tokens": round(real * per_token / best / 1e9, 1),
        "gflops_padded_tokens": round(padded * per_token / best / 1e9, 1),
        "mflop_per_token": round(per_token / 1e6, 2),
    }, vectors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    from tests.texts import passages
    from tools.bench_embed import cpu_model, write_results

    texts = passages(1024)
    results = {
        "date": time.strftime("%Y-%m-%d"),
        "cpu": cpu_model(),
        "gemm_float32": gemm_peak(jnp.float32),
        "gemm_bfloat16": gemm_peak(jnp.bfloat16),
    }
    f32, v32 = measure("float32", texts)
    results["float32_unpacked"], _ = measure("float32", texts, packing=False)
    bf16, v16 = measure("bfloat16", texts)
    cos = np.sum(v32 * v16, axis=1) / (np.linalg.norm(v32, axis=1) * np.linalg.norm(v16, axis=1))
    bf16["cosine_vs_float32"] = {
        "min": round(float(cos.min()), 6),
        "mean": round(float(cos.mean()), 6),
    }
    peak = results["gemm_float32"]["peak_gflops"]
    f32["fraction_of_f32_peak_real"] = round(f32["gflops_real_tokens"] / peak, 3)
    f32["fraction_of_f32_peak_padded"] = round(f32["gflops_padded_tokens"] / peak, 3)
    results["float32"], results["bfloat16"] = f32, bf16
    print(json.dumps(results, indent=1))
    if args.out:
        write_results(args.out, results)


if __name__ == "__main__":
    main()
