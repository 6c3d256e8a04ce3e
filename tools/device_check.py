"""The accelerator check: attention parity, throughput/MFU and memory vs plan, as one markdown table.

Run it first on any GPU or TPU host (it needs only jaxembed; random weights, no
downloads), and put the table in docs/benchmarks.md with the card's name:

    python -m tools.device_check --out device_check.md

(a) parity: every attention implementation this backend has vs `xla`, inside tiny
    BERT, Mistral (sliding window shorter than the input), Qwen3 (GQA) and CLIP
    (text and vision), padded and packed, float32 and bfloat16;
(b) speed: tokens/s and MFU against the chip's bfloat16 peak at bge-large-en-v1.5
    shapes (bf16, 128- and 512-token texts, packing on/off) and Qwen3-Embedding-0.6B
    shapes at 1k, 8k and 32k tokens;
(c) memory: the device's peak bytes after each bucket next to the compiled plan;
(d) the whole server, each stage its own time-boxed process (tools/device_stages.py): cold
    start from an empty and a warm compile cache, the host path in process (MiniLM and
    bge-large shapes with MiniLM's real tokenizer; sentence-transformers on the same GPU
    when torch has CUDA), and a spawned `jaxembed serve` over HTTP (256 texts per request,
    64 and 256 concurrent single-text clients, serial singles; every answer checked).
`--quick` shrinks every shape, checks bfloat16 parity on one family and runs the server
stages beside the kernel rows (a CPU smoke run: what CI executes, ~75 s on 2 cores; its
figures are not measurements). Exit status 1 if a parity row fails. `--json FILE` writes every figure as JSON as well.

On a bare GPU machine with JAX but not the server's packages: pip install sanic pydantic
orjson pyzmq msgpack swagger-ui-py prometheus-client (as wheels if it has no network) and
jaxembed itself; torch is not needed (without it the sentence-transformers row is skipped
and the random-weight models are written by the check's own code path only where torch
exists — carry torch, or point $JAXEMBED_TOKENIZER_DIR at MiniLM's tokenizer files).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import functools
import itertools
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxembed.engine.batching.buckets import Bucket, BucketGrid
from jaxembed.engine.device.memory import abstract_params_on
from jaxembed.engine.device.runner import BucketRunner
from jaxembed.families import get_family
from jaxembed.models.attention import IMPLEMENTATIONS, AttentionConfig, unavailable_reason
from jaxembed.parallel.mesh import make_mesh

# Dense bfloat16 peak per chip, TFLOP/s (vendor figures), by a substring of device_kind.
BF16_PEAK_TFLOPS = (
    ("H200", 989.0),
    ("H100", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("A10", 125.0),
    ("v6", 918.0),
    ("v5p", 459.0),
    ("v5 lite", 197.0),
    ("v5e", 197.0),
    ("v4", 275.0),
)
F32_BOUND, BF16_BOUND = 2e-6, 2e-2

TINY = {
    "bert": {
        "model_type": "bert",
        "vocab_size": 1000,
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 128,
        "max_position_embeddings": 512,
        "type_vocab_size": 2,
    },
    "mistral-window": {
        "model_type": "mistral",
        "vocab_size": 1000,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "sliding_window": 24,
    },
    "qwen3": {
        "model_type": "qwen3",
        "vocab_size": 1000,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 1,
        "head_dim": 32,
    },
    "clip": {
        "model_type": "clip",
        "projection_dim": 32,
        "text_config": {
            "vocab_size": 1000,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 77,
        },
        "vision_config": {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 64,
            "patch_size": 8,
        },
    },
}
POOLING = {"bert": "mean", "clip": "last_token"}


@dataclasses.dataclass
class Row:
    section: str
    model: str
    bucket: str
    attention: str
    dtype: str
    result: str
    ok: bool = True


def _random_params(family, config, dtype, mesh, seed=0):
    """Random parameters with the shapes and shardings the server would load."""
    abstract = abstract_params_on(family, config, dtype, mesh)
    leaves, tree = jax.tree.flatten(abstract)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    arrays = [
        jax.device_put(
            (0.02 * jax.random.normal(k, leaf.shape, jnp.float32)).astype(leaf.dtype),
            leaf.sharding,
        )
        for k, leaf in zip(keys, leaves, strict=True)
    ]
    return jax.tree.unflatten(tree, arrays)


def _runner(family, config, params, impl, dtype, grid, mesh, pooling, packed):
    module = family.module(
        config,
        dtype=jnp.dtype(dtype),
        param_dtype=jnp.dtype(dtype),
        attention=AttentionConfig(impl),
    )
    return BucketRunner(
        module, params, pooling=pooling, normalize=True, grid=grid, mesh=mesh, packed=packed
    )


def _outcome(runner: BucketRunner, ids, mask, bucket: Bucket) -> tuple[np.ndarray, str]:
    """A runner's output on the batch and the attention it ran."""
    run = runner.run_packed if runner.packed else runner.run
    return np.asarray(run(ids, mask)), runner.memory(bucket).attention


def _batch(bucket: Bucket, packed: bool, vocab: int, seed=0):
    """Random ids; rows of varied lengths (padded) or several sequences per row (packed)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, vocab, (bucket.batch, bucket.seq)).astype(np.int32)
    mask = np.zeros_like(ids)
    for r in range(bucket.batch):
        n = bucket.seq if r == 0 else int(rng.integers(1, bucket.seq + 1))
        if packed:
            cuts = np.sort(rng.choice(np.arange(1, n), size=min(3, n - 1), replace=False))
            bounds = [0, *cuts.tolist(), n]
            for s, (a, b) in enumerate(itertools.pairwise(bounds)):
                mask[r, a:b] = s + 1
        else:
            mask[r, :n] = 1
    return ids, mask


def _available(impls=IMPLEMENTATIONS) -> list[str]:
    return [i for i in impls if unavailable_reason(i) is None]


def parity_rows(mesh, quick: bool) -> list[Row]:
    """Every implementation against `xla` per tiny family, dtype and layout (`quick`, the CPU
    smoke run: bfloat16 on the first family only — the CPU runs the same kernels in both)."""
    rows = []
    seq = 64 if quick else 256
    for k, (name, hf) in enumerate(TINY.items()):
        family = get_family(hf["model_type"])
        config = family.config_from_hf(hf)
        pooling = POOLING.get(name, "last_token")
        for dtype in ("float32", "bfloat16") if not quick or k == 0 else ("float32",):
            params = _random_params(family, config, dtype, mesh)
            for packed in (False, True) if family.packable else (False,):
                bucket = Bucket(4, min(seq, 64) if name == "clip" else seq)
                grid = BucketGrid((bucket.seq,), (bucket.batch,), bucket.batch * bucket.seq)
                ids, mask = _batch(bucket, packed, 1000)
                impls = ["xla", *[i for i in _available() if i != "xla"]]
                runners = {
                    impl: _runner(family, config, params, impl, dtype, grid, mesh, pooling, packed)
                    for impl in impls
                }
                outcome = functools.partial(_outcome, ids=ids, mask=mask, bucket=bucket)
                with concurrent.futures.ThreadPoolExecutor(len(impls)) as pool:  # compiles overlap
                    results = dict(zip(impls, pool.map(outcome, runners.values()), strict=True))
                bound = F32_BOUND if dtype == "float32" else BF16_BOUND
                for impl, (out, ran) in results.items():
                    if impl == "xla":
                        continue
                    diff = float(np.abs(out - results["xla"][0]).max())
                    rows.append(
                        Row(
                            "parity vs xla",
                            f"{name} ({'packed' if packed else 'padded'})",
                            f"{bucket.batch}x{bucket.seq}",
                            f"{impl} (ran {ran})",
                            dtype,
                            f"max abs {diff:.2e} (bound {bound:.0e})",
                            diff <= bound,
                        )
                    )
                if name == "clip":
                    rows += _vision_parity(family, config, params, dtype, mesh, bound)
    return rows


def _vision_parity(family, config, params, dtype, mesh, bound) -> list[Row]:
    pixels = np.random.default_rng(1).standard_normal((2, 3, 64, 64)).astype(np.float32)
    outs = {}
    for impl in ["xla", *[i for i in _available() if i != "xla"]]:
        module = family.module(
            config,
            dtype=jnp.dtype(dtype),
            param_dtype=jnp.dtype(dtype),
            attention=AttentionConfig(impl),
        )
        fn = jax.jit(lambda p, x, m=module: m.apply({"params": p}, x, method="encode_image"))
        outs[impl] = np.asarray(fn(params, pixels).astype(jnp.float32))
    return [
        Row(
            "parity vs xla",
            "clip vision",
            "2 images",
            impl,
            dtype,
            f"max abs {float(np.abs(out - outs['xla']).max()):.2e}",
            float(np.abs(out - outs["xla"]).max()) <= bound * 10,
        )
        for impl, out in outs.items()
        if impl != "xla"
    ]


def chip_peak_tflops() -> float | None:
    kind = jax.devices()[0].device_kind
    return next((peak for key, peak in BF16_PEAK_TFLOPS if key.lower() in kind.lower()), None)


def flops_per_token(config, seq: int, causal: bool = False) -> float:
    """2 x non-embedding parameters per token (the matmuls) + attention's QK and PV over the
    keys each query sees: all `seq` of them, or on average (seq + 1) / 2 under a causal mask
    (what a causal kernel computes: counting every score would claim work never done, and
    MFU past 100%)."""
    hidden = config.hidden_size
    layers = config.num_layers
    heads = config.num_heads
    head_dim = getattr(config, "head_dim", hidden // heads)
    kv = getattr(config, "num_kv_heads", heads)
    mlp = config.intermediate_size * hidden * (3 if hasattr(config, "num_kv_heads") else 2)
    attn_proj = hidden * head_dim * (2 * heads + 2 * kv)
    keys = (seq + 1) / 2 if causal else seq
    return layers * (2 * (mlp + attn_proj) + 4 * keys * heads * head_dim)


def _timed(run: Callable[[], jax.Array], seconds: float) -> float:
    jax.block_until_ready(run())
    count, start = 0, time.perf_counter()
    while True:
        jax.block_until_ready(run())
        count += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and count >= 3:
            return elapsed / count


def throughput_rows(mesh, quick: bool, seconds: float) -> tuple[list[Row], list[Row]]:
    """Speed rows and memory rows (peak device bytes after each bucket vs its plan)."""
    from jaxembed.registry import find_card

    peak = chip_peak_tflops()
    speed, memory = [], []
    cases = []
    bge = find_card("bge-large-en-v1.5").architecture
    qwen = find_card("qwen3-embedding-0.6b").architecture
    if quick:
        bge = {**bge, "num_hidden_layers": 2}
        qwen = {**qwen, "num_hidden_layers": 2}
        cases += [("bge-large (2 layers)", bge, "cls", Bucket(4, 128), p) for p in (False, True)]
        cases += [("qwen3-0.6b (2 layers)", qwen, "last_token", Bucket(1, 1024), False)]
    else:
        for packed in (False, True):
            cases += [
                ("bge-large-en-v1.5", bge, "cls", Bucket(128, 128), packed),
                ("bge-large-en-v1.5", bge, "cls", Bucket(32, 512), packed),
            ]
        cases += [
            ("qwen3-embedding-0.6b", qwen, "last_token", Bucket(b, s), False)
            for b, s in ((16, 1024), (1, 8192), (1, 32768))
        ]
    built = {}
    for name, hf, pooling, bucket, packed in cases:
        family = get_family(hf["model_type"])
        config = family.config_from_hf(hf)
        if name not in built:
            built[name] = _random_params(family, config, "bfloat16", mesh)
        grid = BucketGrid((bucket.seq,), (bucket.batch,), bucket.batch * bucket.seq)
        runner = _runner(
            family, config, built[name], "auto", "bfloat16", grid, mesh, pooling, packed
        )
        plan = runner.memory(bucket)
        ids, mask = _batch(bucket, packed, 30000)
        if packed:  # texts of a quarter of the row, four to a row
            quarter = bucket.seq // 4
            mask = np.repeat(np.arange(1, 5, dtype=np.int32), quarter)[None].repeat(bucket.batch, 0)
        else:
            mask = np.ones_like(ids)
        run = (
            (lambda r=runner, i=ids, m=mask: r.run_packed(i, m))
            if packed
            else (lambda r=runner, i=ids, m=mask: r.run(i, m))
        )
        step = _timed(run, seconds)
        tokens = bucket.batch * bucket.seq
        causal = hasattr(config, "num_kv_heads")  # the decoders here are causal
        per_token = flops_per_token(config, bucket.seq // (4 if packed else 1), causal)
        tflops = per_token * tokens / step / 1e12
        mfu = f", MFU {tflops / peak:.1%}" if peak else ""
        label = f"{bucket.batch}x{bucket.seq}" + (" packed 4/row" if packed else "")
        speed.append(
            Row(
                "throughput",
                name,
                label,
                f"auto (ran {plan.attention})",
                "bfloat16",
                f"{tokens / step:,.0f} tokens/s, {step * 1e3:.1f} ms/step, {tflops:.1f} TFLOP/s{mfu}",
            )
        )
        stats = jax.local_devices()[0].memory_stats() or {}
        measured = stats.get("peak_bytes_in_use")
        seen = f"peak {measured / 2**30:.2f} GiB" if measured else "peak not reported"
        memory.append(
            Row(
                "memory vs plan",
                name,
                label,
                plan.attention,
                "bfloat16",
                f"{seen}; plan {plan.total_bytes / 2**30:.2f} GiB "
                f"(temp {plan.temp_bytes / 2**30:.2f})",
            )
        )
    return speed, memory


# (stage, arguments, time limit in seconds): the full run and the CPU smoke run.
FULL_STAGES = (
    ("server", ["--shape", "minilm"], 150),
    ("cold", ["--shape", "minilm"], 120),
    ("host", ["--shape", "bge-large"], 120),
)
QUICK_GRID = "--seq-lengths 16,32,64 --batch-sizes 1,4,16"
QUICK_STAGES = (
    (
        "host",
        ["--shape", "host", "--dtype", "float32", "--texts", "256", "--seq-lengths", "16,32,64"],
        120,
    ),
    (
        "server",
        [
            "--shape",
            "host",
            "--dtype",
            "float32",
            "--texts",
            "256",
            "--api-workers",
            "1",
            "--client-processes",
            "1",
            f"--serve-args={QUICK_GRID}",
        ],
        120,
    ),
    ("cold", ["--shape", "host", f"--serve-args={QUICK_GRID}"], 120),
)


def server_rows(workdir: str, quick: bool) -> tuple[list[Row], list[dict]]:
    """The whole-server stages, each in its own process under its time limit (the server
    stage checks its answers against the vectors the host stage saved, so host runs first)."""
    stages = QUICK_STAGES if quick else (("host", ["--shape", "minilm"], 120), *FULL_STAGES)
    rows, results = [], []
    for stage, stage_args, limit in stages:
        argv = [sys.executable, "-m", "tools.device_stages", stage, "--workdir", workdir]
        started = time.perf_counter()
        try:
            run = subprocess.run(
                [*argv, *stage_args, "--timeout", str(limit)],
                capture_output=True,
                text=True,
                timeout=limit,
            )
        except subprocess.TimeoutExpired:
            rows.append(Row(stage, " ".join(stage_args), "-", "-", "-", f"cut at {limit} s", False))
            continue
        lines = [ln for ln in run.stdout.splitlines() if ln.startswith('{"stage"')]
        if run.returncode or not lines:
            tail = (run.stderr or run.stdout)[-300:].replace("\n", " ").replace("|", "/")
            rows.append(Row(stage, " ".join(stage_args), "-", "-", "-", f"failed: {tail}", False))
            continue
        result = json.loads(lines[-1])
        result["seconds"] = round(time.perf_counter() - started, 1)
        results.append(result)
        rows.append(_stage_row(result))
    return rows, results


def _stage_row(r: dict) -> Row:
    dtype = r.get("dtype", "bfloat16")
    if r["stage"] == "cold":
        empty, warm = r["empty_cache"], r["warm_cache"]
        text = (
            f"ready {empty['ready_s']} s from an empty compile cache "
            f"({empty.get('programs', '?')} programs, {empty.get('compile_s_per_program', '?')} s "
            f"of compiling each, side by side), {warm['ready_s']} s warm "
            f"({warm.get('cache_hits', '?')} from the cache)"
        )
        return Row("cold start", "jaxembed serve", "default grid", "auto", dtype, text)
    if r["stage"] == "host":
        text = f"{r['texts_per_s']:,} texts/s after a first pass of {r['first_pass_s']} s"
        if "st_fp32_b256_texts_per_s" in r:
            text += (
                f"; sentence-transformers fp32 b256 {r['st_fp32_b256_texts_per_s']:,} texts/s, "
                f"min cos {r['min_cos_vs_st']:.6f}"
            )
        return Row(
            "host path",
            f"Embedder.embed, {r['shape']} shape",
            f"{r['texts']} texts",
            "auto",
            dtype,
            text,
        )
    text = (
        f"256/request {r['batch256_texts_per_s']:,} texts/s; 64 singles "
        f"{r['singles64']['per_s']:,} req/s p50 {r['singles64']['p50_ms']} ms p99 "
        f"{r['singles64']['p99_ms']} ms; 256 singles {r['singles256']['per_s']:,} req/s p50 "
        f"{r['singles256']['p50_ms']} ms p99 {r['singles256']['p99_ms']} ms; serial p50 "
        f"{r['serial']['p50_ms']} ms (api workers: {r['api_workers']}, ready {r['ready_s']} s)"
    )
    return Row("server over HTTP", "jaxembed serve", "every answer checked", "auto", dtype, text)


def to_markdown(rows: list[Row]) -> str:
    lines = [
        "| section | model | bucket | attention | dtype | result | ok |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r.section} | {r.model} | {r.bucket} | {r.attention} | {r.dtype} | {r.result} | "
        f"{'yes' if r.ok else '**NO**'} |"
        for r in rows
    ]
    return "\n".join(lines)


def kernel_rows(mesh, args: argparse.Namespace) -> list[Row]:
    """Parity (at full float32 matmul precision), then throughput and memory."""
    jax.config.update("jax_default_matmul_precision", "highest")  # f32 parity means f32
    rows = parity_rows(mesh, args.quick)
    jax.config.update("jax_default_matmul_precision", None)  # speed rows: the default
    speed, memory = throughput_rows(mesh, args.quick, 0.2 if args.quick else args.seconds)
    return rows + speed + memory


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small shapes (a CPU smoke run)")
    p.add_argument("--seconds", type=float, default=3.0, help="timing per throughput row")
    p.add_argument("--out", default=None, help="also write the table to this file")
    p.add_argument("--json", default=None, help="also write every figure as JSON to this file")
    p.add_argument("--skip-server", action="store_true", help="only the kernel sections")
    p.add_argument("--skip-kernels", action="store_true", help="only the server sections")
    p.add_argument("--workdir", default=None, help="models and caches of the server stages")
    args = p.parse_args()
    start = time.perf_counter()
    rows, stages = [], []
    workdir = args.workdir or tempfile.mkdtemp(prefix="jaxembed-device-check-")
    beside = None
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        if not args.skip_server and args.quick and not args.skip_kernels:
            # The CPU smoke run: the server stages' processes beside the kernel rows (its
            # figures are a smoke test's anyway; a device run measures one thing at a time).
            beside = pool.submit(server_rows, workdir, args.quick)
        elif not args.skip_server:  # first, before this process takes the device's memory
            rows, stages = server_rows(workdir, args.quick)
            print(to_markdown(rows), flush=True)
        device = jax.devices()[0]
        if not args.skip_kernels:
            rows += kernel_rows(make_mesh(devices=[device]), args)
        if beside is not None:
            server, stages = beside.result()
            rows = server + rows
    header = (
        f"device: {device.device_kind} ({jax.default_backend()}, {jax.device_count()} device(s)), "
        f"jax {jax.__version__}, implementations available: {', '.join(_available())}, "
        f"bf16 peak {chip_peak_tflops() or 'unknown'} TFLOP/s, {time.perf_counter() - start:.0f} s"
    )
    table = header + "\n\n" + to_markdown(rows)
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"header": header, "rows": [dataclasses.asdict(r) for r in rows], "stages": stages},
                f,
                indent=1,
            )
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
