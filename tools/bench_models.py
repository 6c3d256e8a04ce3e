"""Several models in one process: does a flood on one model delay the others?

Starts one server with three models (MiniLM, a tiny random Qwen3 decoder, a tiny random
CLIP; the decoder's queue limited to `--queue`), then measures the median latency of a
one-text request to MiniLM and to CLIP (a) with the server otherwise idle and (b) while
`--flooders` clients send 64-passage requests to the decoder back to back (waiting the
`Retry-After` of each 503, as the openai client does). Reports both medians, their ratio,
the flood's 503 share and throughput. Every response's status is checked.

`--control` repeats the measurement with the decoder in a *second* server process on the
same machine: the same CPU contention with no shared queue or scheduler, which separates
what the host's cores cost from what sharing one process costs. The flood runs in its own
process (no client threads next to the probe).

    python -m tools.bench_models --out tools/results/models.json
"""

from __future__ import annotations

import argparse
import datetime
import multiprocessing
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx

from tools.bench_embed import cpu_model, write_results

PROBED = ("minilm", "tiny-clip")


def start_servers(root: Path, queue: int, extra: list[str], control: bool) -> list:
    """One server with all three models, or (control) the decoder in a second server.
    Returns [server of the probed models, server of the decoder (maybe the same)]."""
    from tests.helpers import ServerProcess, save_tiny_clip, save_tiny_decoder

    save_tiny_decoder("qwen3", root / "decoder", seed=31)
    save_tiny_clip(root / "clip", seed=32)
    probed = (
        "  - name: minilm\n    model: all-MiniLM-L6-v2\n"
        f"  - name: tiny-clip\n    model: {root / 'clip'}\n"
    )
    decoder = (
        f"  - name: tiny-decoder\n    model: {root / 'decoder'}\n    dtype: float32\n"
        f"    max_queued_requests: {queue}\n"
    )
    configs = [probed, decoder] if control else [probed + decoder]
    servers = []
    for i, models in enumerate(configs):
        path = root / f"models-{i}.yaml"
        path.write_text("models:\n" + models)
        servers.append(ServerProcess("--config", str(path), "--cache-mb", "0", *extra))
    return servers if control else servers * 2


def median_latency(http: httpx.Client, model: str, count: int) -> float:
    times = []
    for i in range(count):
        start = time.perf_counter()
        r = http.post("/v1/embeddings", json={"model": model, "input": f"probe number {i}"})
        assert r.status_code == 200, r.text
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def flood_process(url: str, flooders: int, stop, results) -> None:
    """Flood threads in a process of their own; (statuses, rows) go back through `results`."""
    statuses: list[int] = []
    rows: list[int] = []
    halt = threading.Event()
    threads = [
        threading.Thread(target=flood, args=(url, halt, statuses, rows)) for _ in range(flooders)
    ]
    for t in threads:
        t.start()
    stop.wait()
    halt.set()
    for t in threads:
        t.join()
    results.put((statuses, rows))


def flood(url: str, stop: threading.Event, statuses: list[int], rows: list[int]) -> None:
    body = {"model": "tiny-decoder", "input": [f"flood passage {i} " * 15 for i in range(64)]}
    with httpx.Client(base_url=url, timeout=600) as http:
        while not stop.is_set():
            r = http.post("/v1/embeddings", json={**body, "truncate": True})
            statuses.append(r.status_code)
            assert r.status_code in (200, 503), r.text
            if r.status_code == 503:
                stop.wait(float(r.headers["Retry-After"]))
            else:
                rows.append(len(r.json()["data"]))


def measure(url: str, flood_url: str, flooders: int, probes: int, seconds: float) -> dict:
    http = httpx.Client(base_url=url, timeout=120)
    for model in PROBED:
        median_latency(http, model, 3)  # warm connection and paths
    idle = {m: median_latency(http, m, probes) for m in PROBED}
    context = multiprocessing.get_context("spawn")
    stop, results = context.Event(), context.Queue()
    flooder = context.Process(target=flood_process, args=(flood_url, flooders, stop, results))
    start = time.perf_counter()
    flooder.start()
    time.sleep(seconds)
    loaded = {m: median_latency(http, m, probes) for m in PROBED}
    stop.set()
    statuses, rows = results.get(timeout=600)
    flooder.join()
    elapsed = time.perf_counter() - start
    return {
        "idle_p50_ms": {m: round(v * 1e3, 1) for m, v in idle.items()},
        "flooded_p50_ms": {m: round(v * 1e3, 1) for m, v in loaded.items()},
        "ratio": {m: round(loaded[m] / idle[m], 2) for m in PROBED},
        "flood_requests": len(statuses),
        "flood_503_share": round(statuses.count(503) / max(len(statuses), 1), 2),
        "flood_texts_per_s": round(sum(rows) / elapsed, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--flooders", type=int, default=16)
    p.add_argument("--queue", type=int, default=4, help="the decoder's max_queued_requests")
    p.add_argument("--probes", type=int, default=40)
    p.add_argument("--warm-seconds", type=float, default=2.0, help="flood before probing")
    p.add_argument("--server-args", default="")
    p.add_argument("--control", action="store_true", help="the decoder in a second process")
    p.add_argument("--out", default="tools/results/models.json")
    args = p.parse_args()
    results = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": cpu_model(),
        "flooders": args.flooders,
        "queue": args.queue,
        "layout": "two processes (control)" if args.control else "one process, three models",
    }
    with tempfile.TemporaryDirectory() as tmp:
        probed, decoder = start_servers(
            Path(tmp), args.queue, args.server_args.split(), args.control
        )
        try:
            results |= measure(
                probed.url, decoder.url, args.flooders, args.probes, args.warm_seconds
            )
        finally:
            for server in {id(s): s for s in (probed, decoder)}.values():
                assert server.stop() == 0, server.log()
    print(results)
    write_results(args.out, results)


if __name__ == "__main__":
    main()
