"""Load and soak test: many concurrent clients, mixed good and bad requests, every answer checked.

Each good request (random size, float or base64, with or without matryoshka
`dimensions`, random priority) is compared row by row with the in-process
embedding of its own inputs; each bad request (empty text, bad dimensions,
over-long input, wrong types, unknown model, broken JSON, out-of-vocabulary
token id) must get its specific 4xx in the OpenAI error shape. Reports
requests/s, latency percentiles, status counts, mismatches, 5xx, and the
server's RSS and event-loop task count before and after.

CI runs 10,000 requests from 64 clients against a tiny model
(tests/load/test_soak.py); for a long soak on a real model:

    python -m tools.soak --model all-minilm-l6-v2 --requests 200000 --clients 64
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import json
import random
import sys
import time
from collections import Counter
from collections.abc import Callable

import httpx
import numpy as np

from jaxembed.vectors import truncate_dimensions
from tools.prom import metric_sum

BAD_KINDS = (
    "empty_text",
    "zero_dimensions",
    "too_many_dimensions",
    "too_long",
    "wrong_type",
    "unknown_model",
    "broken_json",
    "token_out_of_vocab",
)


@dataclasses.dataclass(frozen=True)
class Reference:
    """What the server must answer, computed in-process from the same weights."""

    vectors: dict[str, np.ndarray]  # text -> full-width embedding
    tokens: dict[str, int]  # text -> token count
    dimensions: int
    normalize: bool
    vocab_size: int
    max_length: int


@dataclasses.dataclass
class SoakReport:
    requests: int = 0
    good: int = 0
    bad: int = 0
    seconds: float = 0.0
    statuses: Counter = dataclasses.field(default_factory=Counter)
    mismatches: int = 0
    wrong_errors: int = 0
    server_errors: int = 0
    transport_errors: int = 0
    rows_checked: int = 0
    latencies_ms: list[float] = dataclasses.field(default_factory=list)
    problems: list[str] = dataclasses.field(default_factory=list)
    server: dict = dataclasses.field(default_factory=dict)

    def note(self, problem: str) -> None:
        if len(self.problems) < 20:
            self.problems.append(problem)

    def summary(self) -> dict:
        lat = np.asarray(self.latencies_ms or [float("nan")])
        return {
            "requests": self.requests,
            "good": self.good,
            "bad": self.bad,
            "seconds": round(self.seconds, 2),
            "requests_per_s": round(self.requests / self.seconds, 1) if self.seconds else None,
            "rows_checked": self.rows_checked,
            "mismatches": self.mismatches,
            "wrong_errors": self.wrong_errors,
            "server_errors_5xx": self.server_errors,
            "transport_errors": self.transport_errors,
            "statuses": dict(sorted(self.statuses.items())),
            "latency_ms": {f"p{q}": round(float(np.percentile(lat, q)), 1) for q in (50, 90, 99)},
            "server": self.server,
            "problems": self.problems,
        }


def plan_requests(n: int, ref: Reference, rng: random.Random, bad_fraction: float) -> list[dict]:
    """Deterministic request mix: (kind, body or raw bytes, what to expect)."""
    texts = sorted(ref.vectors)
    dims = sorted({ref.dimensions, max(1, ref.dimensions // 2), max(1, ref.dimensions // 4)})
    plans = []
    for _ in range(n):
        if rng.random() < bad_fraction:
            plans.append(_bad_request(rng.choice(BAD_KINDS), ref, rng))
            continue
        chosen = [rng.choice(texts) for _ in range(rng.choice((1, 1, 1, 2, 3, 4, 8, 16)))]
        body: dict = {
            "input": chosen[0] if len(chosen) == 1 and rng.random() < 0.5 else chosen,
            "encoding_format": rng.choice(("float", "base64")),
            "priority": rng.randint(-3, 3),
        }
        d = rng.choice([None, *dims])
        if d is not None:
            body["dimensions"] = d
        plans.append({"kind": "good", "body": body, "texts": chosen, "dimensions": d})
    return plans


def _bad_request(kind: str, ref: Reference, rng: random.Random) -> dict:
    long_text = " ".join(["token"] * (ref.max_length * 2))
    bodies = {
        "empty_text": ({"input": ["fine", "   "]}, 400, "input"),
        "zero_dimensions": ({"input": "x", "dimensions": 0}, 400, "dimensions"),
        "too_many_dimensions": (
            {"input": "x", "dimensions": ref.dimensions + 1},
            400,
            "dimensions",
        ),
        "too_long": ({"input": ["ok", long_text]}, 400, "input"),
        "wrong_type": ({"input": [1.5, "x"]}, 400, "input"),
        "unknown_model": ({"input": "x", "model": "no-such-model"}, 404, "model"),
        "token_out_of_vocab": ({"input": [[5, ref.vocab_size + 7]]}, 400, "input"),
    }
    if kind == "broken_json":
        return {"kind": kind, "raw": b'{"input": ["unterminated', "status": 400, "param": None}
    body, status, param = bodies[kind]
    return {"kind": kind, "body": body, "status": status, "param": param}


def _decode(item: dict, encoding: str) -> np.ndarray:
    if encoding == "base64":
        return np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4")
    return np.asarray(item["embedding"], dtype=np.float32)


def check_good(plan: dict, body: dict, ref: Reference, report: SoakReport, tol: float) -> None:
    data = body.get("data", [])
    texts, d = plan["texts"], plan["dimensions"]
    if [x.get("index") for x in data] != list(range(len(texts))):
        report.mismatches += 1
        report.note(f"wrong indices {[x.get('index') for x in data]} for {len(texts)} inputs")
        return
    expected_tokens = sum(ref.tokens[t] for t in texts)
    if body.get("usage", {}).get("prompt_tokens") != expected_tokens:
        report.mismatches += 1
        report.note(f"usage {body.get('usage')} != {expected_tokens} tokens")
    encoding = plan["body"]["encoding_format"]
    for text, item in zip(texts, data, strict=True):
        got = _decode(item, encoding)
        want = truncate_dimensions(ref.vectors[text][None], d, ref.normalize)[0]
        report.rows_checked += 1
        if got.shape != want.shape or not np.isfinite(got).all() or np.abs(got - want).max() > tol:
            report.mismatches += 1
            report.note(f"row for {text[:40]!r} (dims={d}) differs from the in-process result")


def check_bad(plan: dict, status: int, body: dict, report: SoakReport) -> None:
    error = body.get("error") if isinstance(body, dict) else None
    shape_ok = isinstance(error, dict) and {"message", "type", "param", "code"} <= set(error)
    if (
        status != plan["status"]
        or not shape_ok
        or (plan["param"] and error.get("param") != plan["param"])
    ):
        report.wrong_errors += 1
        report.note(f"{plan['kind']}: got {status} {json.dumps(body)[:200]}")


async def run_soak(
    url: str,
    ref: Reference,
    *,
    requests: int,
    clients: int,
    seed: int = 0,
    bad_fraction: float = 0.05,
    api_key: str | None = None,
    timeout: float = 120.0,
    tol: float = 1e-5,
    progress: Callable[[int, int], None] | None = None,
) -> SoakReport:
    plans = plan_requests(requests, ref, random.Random(seed), bad_fraction)
    report = SoakReport()
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    next_index = iter(range(len(plans)))
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def client_loop(client: httpx.AsyncClient) -> None:
        for i in next_index:
            plan = plans[i]
            started = time.perf_counter()
            try:
                if "raw" in plan:
                    r = await client.post(
                        "/v1/embeddings",
                        content=plan["raw"],
                        headers={**headers, "Content-Type": "application/json"},
                    )
                else:
                    r = await client.post("/v1/embeddings", json=plan["body"], headers=headers)
            except httpx.HTTPError as e:
                report.transport_errors += 1
                report.note(f"transport error: {type(e).__name__}: {e}")
                continue
            report.latencies_ms.append((time.perf_counter() - started) * 1000)
            report.requests += 1
            report.statuses[r.status_code] += 1
            if r.status_code >= 500:
                report.server_errors += 1
                report.note(f"{r.status_code}: {r.text[:200]}")
            try:
                body = r.json()
            except ValueError:
                body = {}
            if plan["kind"] == "good":
                report.good += 1
                if r.status_code != 200:
                    report.mismatches += 1
                    report.note(f"good request got {r.status_code}: {r.text[:200]}")
                else:
                    check_good(plan, body, ref, report, tol)
            else:
                report.bad += 1
                check_bad(plan, r.status_code, body, report)
            if progress and report.requests % 500 == 0:
                progress(report.requests, len(plans))

    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(clients)))
    report.seconds = time.perf_counter() - started
    return report


def build_reference(embedder, texts: list[str]) -> Reference:
    """In-process embeddings and token counts of the text pool (the ground truth)."""
    unique = sorted(set(texts))
    vectors = embedder.embed(unique)
    return Reference(
        vectors=dict(zip(unique, vectors, strict=True)),
        tokens={t: len(ids) for t, ids in zip(unique, embedder.tokenize(unique), strict=True)},
        dimensions=embedder.dimensions,
        normalize=embedder.card.normalize,
        vocab_size=embedder.tokenizer.vocab_size,
        max_length=embedder.max_length,
    )


def text_pool(embedder, size: int = 300) -> list[str]:
    """Varied texts that fit the model without truncation."""
    from tests.texts import varied_texts

    texts = varied_texts()
    lengths = [len(ids) for ids in embedder.tokenize(texts, truncate=True)]
    return [t for t, n in zip(texts, lengths, strict=True) if n < embedder.max_length][:size]


def server_stats(url: str, pid: int | None, api_key: str | None = None) -> dict:
    """RSS of the server process and the gauges that show leaked work."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    text = httpx.get(url + "/metrics", headers=headers, timeout=10).text
    stats = {}
    for name in (
        "jaxembed_event_loop_tasks",
        "jaxembed_active_requests",
        "jaxembed_queue_requests",
    ):
        stats[name] = metric_sum(text, name)
    if pid is not None:
        with open(f"/proc/{pid}/status") as f:
            rss_kib = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        stats["rss_mib"] = round(rss_kib / 1024, 1)
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model to serve and to compute references")
    parser.add_argument("--url", default=None, help="target this server (same --model!)")
    parser.add_argument("--pid", type=int, default=None, help="server pid, for RSS (with --url)")
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--bad-fraction", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write the JSON report here")
    args = parser.parse_args()

    from jaxembed.api import Embedder
    from tests.helpers import ServerProcess

    embedder = Embedder.from_pretrained(args.model)
    ref = build_reference(embedder, text_pool(embedder))
    server = None
    url, pid = args.url, args.pid
    if url is None:
        server = ServerProcess(*(["--model", args.model] if args.model else []))
        url, pid = server.url, server.proc.pid
    try:
        before = server_stats(url, pid)

        def progress(done: int, total: int) -> None:
            print(f"\r{done}/{total} requests", end="", file=sys.stderr, flush=True)

        report = asyncio.run(
            run_soak(
                url,
                ref,
                requests=args.requests,
                clients=args.clients,
                seed=args.seed,
                bad_fraction=args.bad_fraction,
                progress=progress,
            )
        )
        print(file=sys.stderr)
        report.server = {"before": before, "after": server_stats(url, pid)}
    finally:
        if server is not None:
            server.stop()
    summary = report.summary()
    print(json.dumps(summary, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(summary, f, indent=2)
    sys.exit(0 if report.mismatches == report.server_errors == report.wrong_errors == 0 else 1)


if __name__ == "__main__":
    main()
