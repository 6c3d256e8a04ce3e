"""`jaxembed serve --api-workers 2`: two HTTP front-end processes over one engine process.

Answers equal the in-process engine under concurrency; the front-ends share batches, the
queue and /metrics; a killed front-end is replaced; SIGTERM under load breaks nothing and
every process exits; and the server suites that exercise concurrency, draining, several
models, LoRA, images and reranking pass in this layout too (a child pytest).
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.helpers import API_WORKERS_ENV, ServerProcess, metric_value, run_pytest_in_child

MODEL = "all-minilm-l6-v2"


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found += [int(x) for x in text]
    return found


@pytest.fixture(scope="module")
def split():
    server = ServerProcess("--api-workers", "2", "--cache-mb", "0")
    yield server
    assert server.stop() == 0, server.log()


def _vectors(body: dict) -> np.ndarray:
    rows = [np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in body["data"]]
    return np.stack(rows)


def test_two_front_ends_answer_as_the_engine_does_under_concurrency(split, embedder, corpus):
    texts = corpus[:96]
    expected = embedder.embed(texts, truncate=True)

    async def main():
        async with httpx.AsyncClient(base_url=split.url, timeout=120) as client:

            async def one(i):
                r = await client.post(
                    "/v1/embeddings",
                    json={
                        "model": MODEL,
                        "input": texts[i],
                        "truncate": True,
                        "encoding_format": "base64",
                    },
                )
                r.raise_for_status()
                return _vectors(r.json())[0]

            async def batch(start):
                r = await client.post(
                    "/v1/embeddings",
                    json={
                        "model": MODEL,
                        "input": texts[start : start + 16],
                        "truncate": True,
                        "encoding_format": "base64",
                    },
                )
                r.raise_for_status()
                return _vectors(r.json())

            singles = await asyncio.gather(*(one(i) for i in range(64)))
            batches = await asyncio.gather(*(batch(s) for s in range(0, 96, 16)))
            return np.stack(singles), np.concatenate(batches)

    singles, batched = asyncio.run(main())
    assert np.abs(singles - expected[:64]).max() <= 1e-5
    assert np.abs(batched - expected).max() <= 1e-5
    assert len(children(split.proc.pid)) == 2


def test_bad_input_answers_in_the_api_shape_from_a_front_end(split):
    r = httpx.post(split.url + "/v1/embeddings", json={"model": MODEL, "input": [[101, 2**63]]})
    assert r.status_code == 400 and "outside the vocabulary" in r.json()["error"]["message"]
    r = httpx.post(split.url + "/v1/embeddings", json={"model": MODEL, "input": "word " * 400})
    assert r.status_code == 400 and r.json()["error"]["param"] == "input"
    r = httpx.post(split.url + "/v1/embeddings", json={"model": "nope", "input": "x"})
    assert r.status_code == 404


def test_metrics_are_one_view_of_every_process(split):
    before = metric_value(split.url, "jaxembed_requests_total")
    for _ in range(20):  # new connections: the front-ends share the accepts
        httpx.post(split.url + "/v1/embeddings", json={"model": MODEL, "input": "counted"})
    after = metric_value(split.url, "jaxembed_requests_total")
    assert after - before >= 20  # every front-end's count, whichever one answers the scrape
    assert metric_value(split.url, "jaxembed_batches_total") > 0  # the engine process's
    assert metric_value(split.url, "jaxembed_ready") == 1


def test_a_killed_front_end_is_replaced(split):
    victim = children(split.proc.pid)[0]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        alive = children(split.proc.pid)
        if len(alive) == 2 and victim not in alive:
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"no replacement for front-end {victim}: {split.log()}")
    for _ in range(10):  # answered by the survivor and the newcomer alike
        r = httpx.post(
            split.url + "/v1/embeddings", json={"model": MODEL, "input": "still here"}, timeout=60
        )
        assert r.status_code == 200


def test_sigterm_under_load_breaks_no_request_and_every_process_exits_zero():
    server = ServerProcess("--api-workers", "2", "--drain-timeout", "60")
    workers = children(server.proc.pid)
    stop, outcomes = threading.Event(), []

    def client(seed: int) -> None:
        """Keep-alive requests until the server says it is draining (503 + Retry-After, or
        its socket is gone); any request it accepted must be answered."""
        with httpx.Client(base_url=server.url, timeout=120) as http:
            i = 0
            while not stop.is_set():
                texts = [f"load {seed} {i} {j} " * 10 for j in range(8)]
                try:
                    r = http.post("/v1/embeddings", json={"model": MODEL, "input": texts})
                except httpx.ConnectError:
                    outcomes.append("refused")  # the socket closed: nothing was accepted
                    return
                except httpx.TransportError as e:
                    outcomes.append(f"broken: {e!r}")
                    return
                if r.status_code == 200:
                    assert len(r.json()["data"]) == 8
                    outcomes.append("ok")
                elif r.status_code == 503 and "Retry-After" in r.headers:
                    outcomes.append("refused")  # draining: a client backs off, as told
                    return
                else:
                    outcomes.append(f"broken: {r.status_code} {r.text[:200]}")
                i += 1

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    time.sleep(3)
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=120) == 0, server.log()
    stop.set()
    for t in threads:
        t.join(timeout=60)
    broken = [o for o in outcomes if o.startswith("broken")]
    assert not broken and outcomes.count("ok") > 0, (broken[:5], server.log())
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()
    server.stop()


def test_the_server_suites_pass_with_two_front_ends():
    """Concurrency and drain with several models and images (test_multi_model), LoRA
    adapters, reranking: the same tests as in one process, every server started with
    --api-workers 2."""
    root = Path(__file__).resolve().parents[2]
    files = [
        "tests/server/test_multi_model.py",
        "tests/server/test_lora_serving.py",
        "tests/server/test_rerank_api.py",
        "tests/server/test_st_models_serving.py",  # a Router model's routes, grouped again
    ]  # drain: test_sigterm_under_load_breaks_no_request_and_every_process_exits_zero above
    env = {**os.environ, API_WORKERS_ENV: "2"}
    out = run_pytest_in_child([str(root / f) for f in files], env, timeout=1500)
    assert " passed" in out
