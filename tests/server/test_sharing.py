"""Bulk and interactive traffic on one server: queries overtake bulk work, bulk still finishes."""

from __future__ import annotations

import concurrent.futures
import time

import httpx
import numpy as np

from tests.texts import long_passages, passages

MODEL = "all-minilm-l6-v2"


def _post(server, texts, timeout=600):
    start = time.perf_counter()
    r = httpx.post(
        server.url + "/v1/embeddings",
        json={"input": texts, "model": MODEL, "truncate": True},
        timeout=timeout,
    )
    return r, time.perf_counter() - start


def test_queries_during_bulk_work_finish_first(server, embedder):
    """At the same (default) priority, one-text queries sent while a large request (400
    passages of 256 tokens) runs are answered in about a step, not after the bulk request."""
    bulk_texts = long_passages(400)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        bulk = pool.submit(_post, server, bulk_texts)
        time.sleep(1.0)
        latencies = []
        for i in range(5):
            r, seconds = _post(server, [f"where is the cat number {i}?"], timeout=120)
            assert r.status_code == 200
            latencies.append(seconds)
            assert not bulk.done(), "the bulk request finished before the queries"
        response, bulk_seconds = bulk.result()
    assert response.status_code == 200
    assert max(latencies) < bulk_seconds / 4, (latencies, bulk_seconds)
    rows = np.array([d["embedding"] for d in response.json()["data"]], dtype=np.float32)
    expected = embedder.embed(bulk_texts[::20], truncate=True)
    np.testing.assert_allclose(rows[::20], expected, atol=1e-5)
    print(f"queries during bulk: max {max(latencies):.2f} s, bulk {bulk_seconds:.1f} s")


def test_bulk_finishes_under_a_stream_of_queries(server):
    """Starvation-free: four clients keep sending queries while a bulk request runs; the bulk
    request still completes, its time bounded by its size rather than by the stream."""
    bulk_texts = passages(400)
    deadline = time.monotonic() + 180
    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        bulk = pool.submit(_post, server, bulk_texts)

        def stream(client: int) -> int:
            sent = 0
            while not bulk.done() and time.monotonic() < deadline and sent < 500:
                r, _ = _post(server, [f"query {client}-{sent}"], timeout=60)
                assert r.status_code == 200
                sent += 1
            return sent

        sent = [pool.submit(stream, c) for c in range(4)]
        response, seconds = bulk.result()
        counts = [f.result() for f in sent]
    assert response.status_code == 200 and len(response.json()["data"]) == 400
    assert sum(counts) > 20  # the stream really ran alongside
    print(f"bulk of 400 under a stream of {sum(counts)} queries: {seconds:.1f} s")


def test_two_thousand_inputs_in_one_request(server, embedder):
    """The documented maximum (--max-inputs 2048) completes: no framework timeout cuts it.
    (Numbered so that none is answered from the cache.)"""
    texts = [f"{i}: {text}" for i, text in enumerate(passages(2048))]
    response, seconds = _post(server, texts)
    assert response.status_code == 200, response.text[:500]
    rows = np.array([d["embedding"] for d in response.json()["data"]], dtype=np.float32)
    assert rows.shape == (2048, 384)
    np.testing.assert_allclose(rows[::97], embedder.embed(texts[::97], truncate=True), atol=1e-5)
    print(f"2,048 passages in one request: {seconds:.1f} s")
