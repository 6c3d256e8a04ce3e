"""The host path against its floors, in one run (issue: "the host path at accelerator speed").

A 1-layer, 32-wide random BERT with all-MiniLM-L6-v2's real tokenizer makes the device's
share of the work ~nothing, so what is left is jaxembed's own host path:

  in-process   `Embedder.embed` of N passages       vs HF tokenizers' `encode_batch` alone
  http-batch   `jaxembed serve`, 256 texts/request   vs the same tokenizer alone
  http-singles 64 clients sending one text each      vs a bare Sanic app answering a fixed vector

and in-process over a simulated accelerator (tools/hostpath.SimulatedDevice, --simulated-rates):
a large request tokenised in one call vs in slices that overlap the device.

Each figure is the best of `--repeats` passes; every HTTP answer is checked against the
in-process vectors. `--ab-ref REV` adds all-MiniLM-L6-v2 over HTTP served by REV's code (a git
worktree) and by this tree, same run: 16-text requests from 8 clients, 32 concurrent singles,
serial single texts.

    python -m tools.bench_host --out docs/results/host.json
    python -m tools.bench_host --serve-args="--api-workers 2" --ab-ref 55f0d12
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shlex
import subprocess
import tempfile
import time
from pathlib import Path

from tools.bench_embed import best_of, cpu_model, write_results
from tools.hostpath import (
    Spawned,
    bare_argv,
    chunks,
    english_passages,
    random_bert_dir,
    run_load,
    serve_argv,
)

REPO = Path(__file__).resolve().parents[1]


def tokenizer_alone(model_dir: Path, texts: list[str], repeats: int) -> float:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return len(texts) / best_of(lambda: tokenizer.encode_batch(texts), repeats)


def in_process(model_dir: Path, texts: list[str], repeats: int) -> tuple[float, float, dict]:
    """`Embedder.embed` texts/s, and the same model's programs alone (`embed_token_lists` of
    the texts' ids, tokenised beforehand: planning, padding and the device, no tokenizer).
    Where the device is the host's CPU, the tokenizer and XLA share its cores, so no
    pipeline beats running one after the other: 1 / (1/tokenizer + 1/device alone)."""
    from jaxembed.api import Embedder

    embedder = Embedder.from_pretrained(model_dir, compile_cache_dir=False)
    try:
        vectors = embedder.embed(texts, truncate=True)  # compiles what this workload uses
        rate = len(texts) / best_of(lambda: embedder.embed(texts, truncate=True), repeats)
        ids = embedder.tokenizer.encode(texts, truncate=True)
        embedder.embed_token_lists(ids)
        alone = len(texts) / best_of(lambda: embedder.embed_token_lists(ids), repeats)
    finally:
        embedder.close()
    return rate, alone, dict(zip(texts, vectors, strict=True))


def simulated_device(model_dir: Path, texts: list[str], rates: list[float], repeats: int) -> dict:
    """In-process texts/s over a `SimulatedDevice` of each rate, a large request in one
    tokenizer call vs in slices (what the service does when the device is not the CPU)."""
    import dataclasses

    from jaxembed.api import Embedder
    from tools.hostpath import SimulatedDevice

    out = {}
    for rate in rates:
        embedder = Embedder.from_pretrained(model_dir, compile_cache_dir=False, token_budget=16384)
        SimulatedDevice(rate, embedder.dimensions).install(embedder.runner)
        service = embedder.service()
        try:
            for label, host in (("one_call", True), ("slices", False)):
                service.facts = dataclasses.replace(service.facts, host_devices=host)
                embedder.embed(texts, truncate=True)
                seconds = best_of(functools.partial(embedder.embed, texts, truncate=True), repeats)
                out[f"{rate:.0e}_tokens_per_s_{label}"] = round(len(texts) / seconds)
        finally:
            embedder.close()
    return out


def best_load(port: int, batches, *, repeats: int, **options) -> dict:
    runs = [run_load(port, batches, **options) for _ in range(repeats)]
    return max(runs, key=lambda s: s.per_second).summary()


def http_scenarios(
    argv: list[str], texts: list[str], singles: int, reference, repeats: int, model: str
) -> dict:
    server = Spawned(argv)
    try:
        out = {
            "ready_s": round(server.ready_seconds, 1),
            "grid_s": round(server.wait_for_grid(), 1),
        }
        batch = best_load(
            server.port,
            chunks(texts, 256),
            repeats=repeats,
            model=model,
            concurrency=4,
            reference=reference,
        )
        out["batch256_texts_per_s"] = batch["per_s"] * 256
        out["batch256"] = batch
        out["singles64"] = best_load(
            server.port,
            chunks(texts[:singles], 1),
            repeats=repeats,
            model=model,
            concurrency=64,
            reference=reference,
        )
        # Tails (the p99 <= 5x p50): 256 single-text clients at once, one pass.
        tails = run_load(
            server.port, chunks(texts[:singles], 1), model=model, concurrency=256,
            reference=reference,
        ).summary()  # fmt: skip
        out["singles256"] = tails
        out["serial"] = run_load(
            server.port, chunks(texts[:200], 1), model=model, concurrency=1, reference=reference
        ).summary()
    finally:
        server.stop()
    return out


def bare_singles(texts: list[str], singles: int, dim: int, repeats: int) -> dict:
    server = Spawned(bare_argv(dim))
    try:
        return best_load(
            server.port,
            chunks(texts[:singles], 1),
            repeats=repeats,
            model="bare",
            concurrency=64,
            reference=None,
        )
    finally:
        server.stop()


def host_ratios(args: argparse.Namespace, workdir: Path) -> dict:
    model_dir = random_bert_dir(workdir / "host-bert", "host")
    texts = english_passages(args.texts)
    tokenizer_rate = tokenizer_alone(model_dir, texts, args.repeats)
    embed_rate, device_rate, reference = in_process(model_dir, texts, args.repeats)
    serial_bound = 1 / (1 / tokenizer_rate + 1 / device_rate)
    http = http_scenarios(
        serve_argv(str(model_dir), shlex.split(args.serve_args)),
        texts,
        args.singles,
        reference,
        args.repeats,
        model="host-bert",
    )
    bare = bare_singles(texts, args.singles, 32, args.repeats)
    rates = [float(r) for r in args.simulated_rates.split(",") if r]
    return {
        "tokenizer_texts_per_s": round(tokenizer_rate),
        "in_process_texts_per_s": round(embed_rate),
        "device_alone_texts_per_s": round(device_rate),
        "tokenizer_then_device_bound_texts_per_s": round(serial_bound),
        "in_process_simulated_device": simulated_device(model_dir, texts, rates, args.repeats),
        "http": http,
        "bare_singles64": bare,
        "ratios": {
            "in_process_vs_tokenizer": round(embed_rate / tokenizer_rate, 3),
            "device_alone_vs_tokenizer": round(device_rate / tokenizer_rate, 3),
            "in_process_vs_serial_bound": round(embed_rate / serial_bound, 3),
            "http_batch256_vs_tokenizer": round(http["batch256_texts_per_s"] / tokenizer_rate, 3),
            "http_singles64_vs_bare": round(http["singles64"]["per_s"] / bare["per_s"], 3),
        },
    }


def worktree_at(ref: str, workdir: Path) -> dict[str, str]:
    """A checkout of `ref` importable ahead of this tree (`jaxembed_server` is its server/)."""
    tree = workdir / "ab-tree"
    if not tree.exists():
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), ref],
            check=True,
            capture_output=True,
        )
    shim = workdir / "ab-path"
    shim.mkdir(exist_ok=True)
    if not (shim / "jaxembed_server").exists():
        (shim / "jaxembed_server").symlink_to(tree / "server")
    return {"PYTHONPATH": f"{shim}:{tree}"}


def minilm_ab(args: argparse.Namespace, workdir: Path) -> dict:
    """all-MiniLM-L6-v2 over HTTP: `--ab-ref`'s code, then this tree's, same scenarios."""
    from jaxembed.api import Embedder

    texts = english_passages(1024)
    embedder = Embedder.from_pretrained(compile_cache_dir=False)
    try:
        reference = dict(zip(texts, embedder.embed(texts, truncate=True), strict=True))
    finally:
        embedder.close()
    model = "all-minilm-l6-v2"
    out = {}
    for label, env in (("before", worktree_at(args.ab_ref, workdir)), ("after", {})):
        argv = [a for a in serve_argv(model) if a not in ("--model", model)]
        server = Spawned(
            [*argv, *shlex.split(args.serve_args if label == "after" else "")],
            env=env,
            cwd=str(workdir),
        )
        try:
            server.wait_for_grid()
            common = dict(model=model, reference=reference)
            # The same 512 texts both ways (the two halves of the corpus differ by ~9% in
            # tokens per text, which once showed as a gap between the two).
            batched = best_load(
                server.port, chunks(texts[:512], 16), repeats=args.repeats, concurrency=8, **common
            )
            singles = best_load(
                server.port, chunks(texts[:512], 1), repeats=args.repeats, concurrency=32, **common
            )
            serial = run_load(server.port, chunks(texts[:200], 1), concurrency=1, **common)
        finally:
            server.stop()
        out[label] = {
            "batched16x8_texts_per_s": round(batched["per_s"] * 16, 1),
            "singles32_per_s": singles["per_s"],
            "singles32_vs_batched": round(singles["per_s"] / (batched["per_s"] * 16), 3),
            "batched16x8": batched,
            "singles32": singles,
            "serial": serial.summary(),
        }
        print(label, json.dumps(out[label]), flush=True)
    return out


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--texts", type=int, default=10_400)
    p.add_argument("--singles", type=int, default=6_400, help="single-text requests per pass")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--serve-args", default="", help="extra `jaxembed serve` options")
    p.add_argument("--ab-ref", default=None, help="git revision for the MiniLM before/after")
    p.add_argument("--skip-ratios", action="store_true")
    p.add_argument(
        "--simulated-rates",
        default="1e6,3e6",
        help="tokens/s of the simulated accelerators for the in-process overlap rows",
    )
    p.add_argument("--workdir", default=None, help="models and worktree (default: a temp dir)")
    p.add_argument("--out", default=None)
    return p.parse_args()


def main() -> None:
    args = parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="jaxembed-bench-host-"))
    workdir.mkdir(parents=True, exist_ok=True)
    results: dict = {
        "date": time.strftime("%Y-%m-%d"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "texts": args.texts,
        "serve_args": args.serve_args,
    }
    if not args.skip_ratios:
        results["host"] = host_ratios(args, workdir)
        print(json.dumps(results["host"], indent=1), flush=True)
    if args.ab_ref:
        results["minilm_ab"] = {"ref": args.ab_ref, **minilm_ab(args, workdir)}
    if args.out:
        write_results(args.out, results)
    print(json.dumps(results.get("host", {}).get("ratios", {})))


if __name__ == "__main__":
    main()
