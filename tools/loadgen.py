"""HTTP load generator: drives a jaxembed server on 127.0.0.1 and compares with in-process `Embedder`.

Scenarios (bounded in count and time, loopback only):
  batched  1,024 passages, 16 texts/request, 8 concurrent clients
  serial   200 single short texts, one at a time (latency)
  c32      32 concurrent clients, one passage per request
Every response is checked: count, width, finite values, and a sample against
in-process embeddings. Starts its own server unless --url is given.

    python -m tools.loadgen --out tools/results/loadgen.json
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
import time

import httpx
import numpy as np

from tools.bench_embed import cpu_model, write_results
from tools.prom import metric_sum

MODEL = "all-minilm-l6-v2"


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


class Checker:
    """Validates responses and compares a sample of rows with in-process results."""

    def __init__(self, reference: dict[str, np.ndarray], every: int = 7):
        self.reference, self.every, self.checked, self.count = reference, every, 0, 0

    def __call__(self, texts: list[str], body: dict) -> None:
        data = body["data"]
        assert len(data) == len(texts), "wrong number of embeddings"
        for i, item in enumerate(data):
            assert item["index"] == i
            v = np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4")
            assert v.shape == (384,) and np.isfinite(v).all()
            self.count += 1
            if self.count % self.every == 0:
                ref = self.reference[texts[i]]
                assert np.abs(v - ref).max() <= 1e-5, "embedding differs from in-process result"
                self.checked += 1


async def run_requests(
    url: str, batches: list[list[str]], concurrency: int, check: Checker, timeout: float
) -> dict:
    latencies: list[float] = []
    queue: asyncio.Queue = asyncio.Queue()
    for b in batches:
        queue.put_nowait(b)
    deadline = time.monotonic() + timeout

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty() and time.monotonic() < deadline:
            texts = queue.get_nowait()
            start = time.perf_counter()
            r = await client.post(
                url + "/v1/embeddings",
                json={
                    "model": MODEL,
                    "input": texts,
                    "encoding_format": "base64",
                    "truncate": True,
                },
            )
            latencies.append(time.perf_counter() - start)
            r.raise_for_status()
            check(texts, r.json())

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=120) as client:
        start = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    texts = sum(len(b) for b in batches[: len(latencies)])
    return {
        "requests": len(latencies),
        "texts": texts,
        "seconds": elapsed,
        "texts_per_s": texts / elapsed,
        "p50_ms": percentile(latencies, 50) * 1e3,
        "p90_ms": percentile(latencies, 90) * 1e3,
        "p99_ms": percentile(latencies, 99) * 1e3,
    }


def batch_fill(url: str) -> float:
    metrics = httpx.get(url + "/metrics").text
    total = metric_sum(metrics, "jaxembed_batch_fill_ratio_sum") or 0.0
    count = metric_sum(metrics, "jaxembed_batch_fill_ratio_count") or 0.0
    return total / count if count else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--url", default=None, help="target a running server instead of starting one"
    )
    parser.add_argument("--passages", type=int, default=1024)
    parser.add_argument("--serial", type=int, default=200)
    parser.add_argument("--timeout", type=float, default=600, help="seconds per scenario, at most")
    parser.add_argument("--server-args", default="", help="extra `jaxembed serve` arguments")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    from jaxembed.api import Embedder
    from tests.texts import passages

    texts = passages(args.passages)
    short = [f"short query number {i} about topic {i % 17}" for i in range(args.serial)]
    embedder = Embedder.from_pretrained(None)
    embedder.embed(texts, truncate=True)
    start = time.perf_counter()
    in_process = embedder.embed(texts, truncate=True)
    in_process_s = time.perf_counter() - start
    single_lat = []
    for t in short:
        s = time.perf_counter()
        embedder.embed([t])
        single_lat.append(time.perf_counter() - s)
    reference = dict(zip(texts, in_process, strict=True)) | dict(
        zip(short, embedder.embed(short), strict=True)
    )

    server = None
    url = args.url
    if url is None:
        sys.path.insert(0, os.getcwd())
        from tests.helpers import ServerProcess

        server = ServerProcess(*args.server_args.split())
        url = server.url
    results = {
        "date": time.strftime("%Y-%m-%d"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "in_process": {
            "passages_texts_per_s": len(texts) / in_process_s,
            "single_p50_ms": percentile(single_lat, 50) * 1e3,
            "single_p99_ms": percentile(single_lat, 99) * 1e3,
        },
    }
    try:
        check = Checker(reference)
        scenarios = {
            "batched_16x8": ([texts[i : i + 16] for i in range(0, len(texts), 16)], 8),
            "serial_single_short": ([[t] for t in short], 1),
            "c32_single_passage": ([[t] for t in texts[:512]], 32),
        }
        for name, (batches, concurrency) in scenarios.items():
            r = asyncio.run(run_requests(url, batches, concurrency, check, args.timeout))
            results[name] = r
            print(name, json.dumps(r), flush=True)
        results["mean_batch_fill_ratio"] = batch_fill(url)
        results["rows_checked_against_in_process"] = check.checked
        results["http_vs_in_process_batched"] = (
            results["batched_16x8"]["texts_per_s"] / results["in_process"]["passages_texts_per_s"]
        )
        print(
            json.dumps(results["in_process"]),
            "ratio",
            results["http_vs_in_process_batched"],
            flush=True,
        )
    finally:
        if server is not None:
            server.stop()
    if args.out:
        write_results(args.out, results)


if __name__ == "__main__":
    main()
