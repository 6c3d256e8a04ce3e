"""--request-timeout: a 504 in OpenAI's shape, a counter, a free server; admission up front."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.helpers import ServerProcess, metric_value
from tests.texts import long_passages

MODEL = "all-minilm-l6-v2"


@pytest.fixture(scope="module")
def timeout_server():
    proc = ServerProcess("--request-timeout", "5", "--cache-mb", "0")
    yield proc
    assert proc.stop() == 0, proc.log()


def test_timeout_then_admission(timeout_server):
    texts = long_passages(2048)  # ~256 tokens each: far more than 5 s of work
    body = {"input": texts, "model": MODEL, "truncate": True}
    start = time.perf_counter()
    r = httpx.post(timeout_server.url + "/v1/embeddings", json=body, timeout=120)
    elapsed = time.perf_counter() - start
    assert r.status_code == 504, r.text[:300]
    error = r.json()["error"]
    assert error["code"] == "timeout" and error["type"] == "server_error"
    assert "--request-timeout of 5 s" in error["message"] and "of 2048 inputs" in error["message"]
    assert 4.5 <= elapsed < 20
    assert metric_value(timeout_server.url, "jaxembed_request_timeouts_total") == 1
    # The server is free at once: nothing of the dead request is left queued.
    start = time.perf_counter()
    r = httpx.post(
        timeout_server.url + "/v1/embeddings", json={"input": "hello", "model": MODEL}, timeout=30
    )
    assert r.status_code == 200 and time.perf_counter() - start < 3
    assert metric_value(timeout_server.url, "jaxembed_queue_requests") == 0
    # Now the server has measured its speed: the same request is refused up front (413).
    start = time.perf_counter()
    r = httpx.post(timeout_server.url + "/v1/embeddings", json=body, timeout=120)
    # (413 itself says it was refused before its work ran: that would have been a 504 at 5 s;
    # the bound only allows for tokenising 2,048 inputs on a busy machine.)
    assert r.status_code == 413 and time.perf_counter() - start < 15, r.text[:300]
    error = r.json()["error"]
    assert error["code"] == "request_too_large" and "--request-timeout of 5 s" in error["message"]
    assert "split it into requests of at most about" in error["message"]
    assert metric_value(timeout_server.url, "jaxembed_request_timeouts_total") == 1


def test_time_limits_are_set_from_the_options():
    from jaxembed.api import Embedder
    from jaxembed_server.app import RESPONSE_MARGIN_SECONDS, create_app
    from jaxembed_server.config import ServerConfig

    embedder = Embedder.from_pretrained(compile_cache_dir=False)
    app = create_app(
        ServerConfig(request_timeout=900, read_timeout=20, keep_alive_timeout=30), embedder
    )
    assert app.config.RESPONSE_TIMEOUT == 900 + RESPONSE_MARGIN_SECONDS
    assert (app.config.REQUEST_TIMEOUT, app.config.KEEP_ALIVE_TIMEOUT) == (20, 30)
    unlimited = create_app(ServerConfig(request_timeout=0), embedder)
    assert unlimited.config.RESPONSE_TIMEOUT >= 10**9
