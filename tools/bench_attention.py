"""Per-bucket time of each attention implementation, through the serving programs (same run).

A MiniLM-shaped encoder (6 layers, 12 heads of 32, random weights, positions
extended to the longest bucket) is compiled per bucket by the engine's
`BucketRunner` once per implementation, and every bucket is timed on full rows
(no padding), alternating implementations so machine drift hits all alike.
Memory comes from each compiled program's memory analysis. This is what the
`auto` table in jaxembed/models/attention.py is derived from.

    python -m tools.bench_attention --buckets 2x256,1x512,1x1024,1x2048 --out tools/results/attention.json
"""

from __future__ import annotations

import argparse
import datetime
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxembed.engine.batching.buckets import BucketGrid
from jaxembed.engine.device.memory import parse_buckets
from jaxembed.engine.device.runner import BucketRunner
from jaxembed.families import get_family
from jaxembed.models.attention import AttentionConfig
from jaxembed.parallel.mesh import make_mesh
from tools.bench_embed import cpu_model, write_results

MINILM_SHAPE = {
    "model_type": "bert",
    "vocab_size": 30522,
    "hidden_size": 384,
    "num_hidden_layers": 6,
    "num_attention_heads": 12,
    "intermediate_size": 1536,
    "type_vocab_size": 2,
}


def build_runners(max_len: int, impls, buckets, dtype: str):
    family = get_family("bert")
    config = family.config_from_hf({**MINILM_SHAPE, "max_position_embeddings": max_len})
    mesh = make_mesh(devices=jax.local_devices()[:1])
    ids = jnp.ones((1, 8), jnp.int32)
    params = family.module(config).init(jax.random.key(0), ids, ids)["params"]
    params = jax.tree.map(lambda x: jnp.asarray(x, dtype), params)
    seqs = sorted({b.seq for b in buckets})
    grid = BucketGrid(tuple(seqs), tuple(sorted({b.batch for b in buckets})), 1)
    runners = {}
    for impl in impls:
        module = family.module(
            config,
            dtype=jnp.dtype(dtype),
            param_dtype=jnp.dtype(dtype),
            attention=AttentionConfig(impl),
        )
        runners[impl] = BucketRunner(
            module, params, pooling="mean", normalize=True, grid=grid, mesh=mesh
        )
    return runners


def time_bucket(runner: BucketRunner, bucket, repeats: int) -> float:
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 30000, (bucket.batch, bucket.seq)).astype(np.int32)
    mask = np.ones_like(ids)
    np.asarray(runner.run(ids, mask))  # compile + first run
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        np.asarray(runner.run(ids, mask))
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--buckets", type=parse_buckets, default=parse_buckets("2x256,1x512,1x1024,1x2048")
    )
    p.add_argument("--impls", default="xla,blocked,auto")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default="tools/results/attention.json")
    args = p.parse_args()
    impls = args.impls.split(",")
    runners = build_runners(max(b.seq for b in args.buckets), impls, args.buckets, args.dtype)
    rows = []
    for bucket in args.buckets:
        row = {"bucket": f"{bucket.batch}x{bucket.seq}"}
        for impl in impls:  # alternate implementations within a bucket
            row[f"{impl}_ms"] = round(time_bucket(runners[impl], bucket, args.repeats) * 1e3, 2)
            memory = runners[impl].memory(bucket)
            row[f"{impl}_temp_mib"] = round(memory.temp_bytes / 2**20, 1)
            row[f"{impl}_runs"] = memory.attention
        rows.append(row)
        print(row, flush=True)
    results = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": f"{cpu_model()}, {jax.device_count()} {jax.default_backend()} device(s)",
        "jax": jax.__version__,
        "model": "MiniLM-shaped encoder (random weights)",
        "dtype": args.dtype,
        "rows": rows,
    }
    write_results(args.out, results)
    header = "| bucket | " + " | ".join(f"{i} ms (temp MiB)" for i in impls) + " |"
    print(header)
    print("|" + "---|" * (len(impls) + 1))
    for row in rows:
        cells = " | ".join(f"{row[f'{i}_ms']} ({row[f'{i}_temp_mib']})" for i in impls)
        print(f"| {row['bucket']} | {cells} |")


if __name__ == "__main__":
    main()
