"""The stages of the device check that measure the whole server, each run by
tools/device_check.py as its own process under a time limit (a stage that overruns is cut
and reported; the others still run). Each prints one JSON line.

  cold    `jaxembed serve` of a MiniLM-shaped model from an empty, then a warm compile cache:
          seconds to /ready, programs, compile seconds, cache hits
  host    `Embedder.embed` of English passages with MiniLM's real tokenizer (random weights,
          MiniLM and bge-large shapes), first and second pass; sentence-transformers on the
          same GPU in the same run when torch has CUDA; min cosine between them
  server  a spawned `jaxembed serve`: 256 texts per request, 64 and 256 concurrent single-text
          clients, serial singles; every answer checked against the in-process vectors

    python -m tools.device_stages host --shape minilm --workdir /tmp/dc
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from tools.hostpath import (
    Spawned,
    chunks,
    english_passages,
    random_bert_dir,
    run_load,
    run_load_processes,
    serve_argv,
)

TEXTS = 10_400
# A grid that compiles in seconds for the large shape (its default GPU grid would take minutes).
BGE_SEQ_LENGTHS = "32,64,128,256"


def cold(args: argparse.Namespace) -> dict:
    model = random_bert_dir(Path(args.workdir) / args.shape, args.shape)
    cache = Path(args.workdir) / f"compile-cache-{os.getpid()}"
    out = {"dtype": "model default"}
    for label in ("empty_cache", "warm_cache"):
        server = Spawned(
            serve_argv(
                str(model),
                [
                    "--compile-cache",
                    str(cache),
                    "--api-workers",
                    "1",
                    *shlex.split(args.serve_args),
                ],
            ),
            timeout=args.timeout,
        )
        log = _log_with_summary(server, args.timeout)
        server.stop()
        out[label] = {"ready_s": round(server.ready_seconds, 1), **_warmup_facts(log)}
    return out


SUMMARY = re.compile(
    r"warm-up \S+: (\d+) programs in ([\d.]+) s \(([\d.]+) s of compiling, (\d+) from the "
    r"compile cache, (\d+) compiled\)"
)


def _log_with_summary(server: Spawned, timeout: float) -> str:
    """The server's log once its warm-up summary is in it (the rest of the grid compiles after
    /ready): ready time and whole warm-up are two different figures."""
    deadline = time.monotonic() + timeout
    while True:
        log = server.log_path.read_text(errors="replace")
        if SUMMARY.search(log) or time.monotonic() > deadline:
            return log
        time.sleep(0.2)


def _warmup_facts(log: str) -> dict:
    match = SUMMARY.search(log)
    if not match:
        return {}
    programs, wall, compiling, hits, misses = match.groups()
    return {
        "programs": int(programs),
        "warmup_s": float(wall),
        "compile_s_per_program": round(float(compiling) / max(int(programs), 1), 2),
        "cache_hits": int(hits),
        "compiled": int(misses),
    }


def host(args: argparse.Namespace) -> dict:
    from jaxembed.api import Embedder

    texts = english_passages(args.texts)
    model = random_bert_dir(Path(args.workdir) / args.shape, args.shape)
    lengths = args.seq_lengths or (BGE_SEQ_LENGTHS if args.shape == "bge-large" else None)
    grid = {"seq_lengths": [int(x) for x in lengths.split(",")]} if lengths else {}
    embedder = Embedder.from_pretrained(
        model, dtype=args.dtype, compile_cache_dir=Path(args.workdir) / "compile-cache", **grid
    )
    start = time.perf_counter()
    warm = embedder.runner.warmup(max_len=embedder.warmup_max_len)
    first = time.perf_counter()
    vectors = embedder.embed(texts, truncate=True)
    first = time.perf_counter() - first
    seconds = min(_timed(lambda: embedder.embed(texts, truncate=True)) for _ in range(2))
    embedder.close()
    np.save(Path(args.workdir) / f"{args.shape}-{args.dtype}.npy", vectors)
    _texts_file(args).write_text(json.dumps(texts))
    out = {
        "shape": args.shape,
        "dtype": args.dtype,
        "texts": len(texts),
        "warmup_s": round(warm, 1),
        "first_pass_s": round(first, 2),
        "load_and_first_s": round(time.perf_counter() - start - seconds * 2, 1),
        "texts_per_s": round(len(texts) / seconds),
    }
    out.update(_sentence_transformers(model, texts, vectors))
    return out


def _texts_file(args: argparse.Namespace) -> Path:
    """The exact texts the host stage embedded: the server stage checks its answers against
    them (which standard-library docstrings a process finds depends on what it imported)."""
    return Path(args.workdir) / f"{args.shape}-{args.dtype}-texts.json"


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _sentence_transformers(model: Path, texts: list[str], ours: np.ndarray) -> dict:
    try:
        import torch
        from sentence_transformers import SentenceTransformer
    except ImportError:
        return {"sentence_transformers": "not installed"}
    if not torch.cuda.is_available():
        return {"sentence_transformers": "no CUDA in torch"}
    st = SentenceTransformer(str(model), device="cuda")
    reference = st.encode(texts, batch_size=256)
    seconds = min(_timed(lambda: st.encode(texts, batch_size=256)) for _ in range(2))
    cos = (
        (ours * reference).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(reference, axis=1)
    )
    return {
        "st_fp32_b256_texts_per_s": round(len(texts) / seconds),
        "min_cos_vs_st": float(cos.min()),
    }


def server(args: argparse.Namespace) -> dict:
    model = random_bert_dir(Path(args.workdir) / args.shape, args.shape)
    texts = json.loads(_texts_file(args).read_text())
    vectors = np.load(Path(args.workdir) / f"{args.shape}-{args.dtype}.npy")
    reference = dict(zip(texts, vectors, strict=True))
    extra = [
        "--compile-cache",
        str(Path(args.workdir) / "compile-cache"),
        "--dtype",
        args.dtype,
        *shlex.split(args.serve_args),
    ]
    if args.api_workers:
        extra += ["--api-workers", str(args.api_workers)]
    spawned = Spawned(serve_argv(str(model), extra), timeout=args.timeout)
    out = {
        "ready_s": round(spawned.ready_seconds, 1),
        "api_workers": args.api_workers or "default",
        "dtype": args.dtype,
    }
    common = {"model": args.shape, "reference": reference, "processes": args.client_processes}
    try:
        batched = max(
            (
                run_load_processes(spawned.port, chunks(texts, 256), concurrency=8, **common)
                for _ in range(2)
            ),
            key=lambda s: s.per_second,
        )
        out["batch256_texts_per_s"] = round(batched.per_second * 256)
        singles = chunks(texts * 2, 1)
        for clients in (64, 256):
            stats = run_load_processes(spawned.port, singles, concurrency=clients, **common)
            out[f"singles{clients}"] = stats.summary()
        serial = run_load(
            spawned.port,
            chunks(texts[:300], 1),
            model=args.shape,
            concurrency=1,
            reference=reference,
        )
        out["serial"] = serial.summary()
    finally:
        spawned.stop()
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("stage", choices=["cold", "host", "server"])
    p.add_argument("--workdir", required=True)
    p.add_argument("--shape", default="minilm", choices=["minilm", "bge-large", "host"])
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--texts", type=int, default=TEXTS)
    p.add_argument("--api-workers", type=int, default=None)
    p.add_argument("--client-processes", type=int, default=4)
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--serve-args", default="", help="extra `jaxembed serve` options (a grid)")
    p.add_argument("--seq-lengths", default=None, help="host stage: bucket lengths, e.g. 16,32")
    args = p.parse_args()
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    result = {"cold": cold, "host": host, "server": server}[args.stage](args)
    print(json.dumps({"stage": args.stage, **result}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
