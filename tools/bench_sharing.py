"""Bulk and interactive traffic on one server: a 2,048-passage request, and queries during bulk work.

(1) one request of 2,048 passages of ~256 tokens (the --max-inputs limit): status and time;
(2) a 1,000-passage request at the default priority, and a one-text query every
    `--query-every` seconds from 3 s after it starts: each query's latency (median, max)
    and the bulk request's time and throughput.
Every response's row count is checked. Against a running server (`--url`, e.g. an older
build for an A/B in the same run) or one this tool starts from the working tree.

    python -m tools.bench_sharing --out tools/results/sharing.json
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import statistics
import time

import httpx

from tests.texts import long_passages
from tools.bench_embed import cpu_model, write_results


def post(url: str, texts: list[str], timeout: float = 3600) -> tuple[int, int, float]:
    start = time.perf_counter()
    r = httpx.post(url, json={"input": texts, "truncate": True}, timeout=timeout)
    rows = len(r.json().get("data", [])) if r.status_code == 200 else 0
    return r.status_code, rows, time.perf_counter() - start


def queries_during_bulk(url: str, bulk: list[str], every: float) -> dict:
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        start = time.perf_counter()
        future = pool.submit(post, url, bulk)
        time.sleep(3.0)
        latencies = []
        while not future.done():
            status, rows, seconds = post(url, [f"a short query {len(latencies)}"], timeout=600)
            assert status == 200 and rows == 1, status
            latencies.append(seconds)
            time.sleep(every)
        status, rows, seconds = future.result()
    assert status == 200 and rows == len(bulk), (status, rows)
    return {
        "bulk_texts": len(bulk),
        "bulk_seconds": round(seconds, 1),
        "bulk_texts_per_s": round(len(bulk) / seconds, 1),
        "queries": len(latencies),
        "query_p50_s": round(statistics.median(latencies), 3) if latencies else None,
        "query_max_s": round(max(latencies), 3) if latencies else None,
        "wall_s": round(time.perf_counter() - start, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default=None, help="embeddings endpoint of a running server")
    p.add_argument("--label", default="jaxembed")
    p.add_argument("--server-args", default="", help="extra `jaxembed serve` arguments")
    p.add_argument("--bulk", type=int, default=1000)
    p.add_argument("--query-every", type=float, default=0.5)
    p.add_argument("--skip-2048", action="store_true")
    p.add_argument("--out", default="tools/results/sharing.json")
    args = p.parse_args()
    server = None
    url = args.url
    if url is None:
        from tests.helpers import ServerProcess

        server = ServerProcess("--cache-mb", "0", *args.server_args.split())
        url = server.url + "/v1/embeddings"
    results = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": cpu_model(),
        "label": args.label,
    }
    try:
        post(url, ["warm up"])
        if not args.skip_2048:
            status, rows, seconds = post(url, long_passages(2048))
            results["request_2048"] = {"status": status, "rows": rows, "seconds": round(seconds, 1)}
            print(results["request_2048"], flush=True)
        results["queries_during_bulk"] = queries_during_bulk(
            url, long_passages(args.bulk), args.query_every
        )
        print(results["queries_during_bulk"], flush=True)
    finally:
        if server is not None:
            server.stop()
    write_results(args.out, results)


if __name__ == "__main__":
    main()
