"""SIGTERM with work in flight: the request completes, new work is refused, the process exits 0."""

from __future__ import annotations

import signal
import threading
import time

import httpx

from tests.helpers import ServerProcess, metric_value


def test_sigterm_drains_in_flight_work_and_exits_zero(capsys):
    server = ServerProcess("--no-warmup", "--drain-timeout", "60")
    body = {
        "model": "all-minilm-l6-v2",
        "input": [f"drain me {i} " * 25 for i in range(96)],
        "truncate": True,
    }
    result = {}

    def in_flight():
        result["response"] = httpx.post(server.url + "/v1/embeddings", json=body, timeout=120)

    thread = threading.Thread(target=in_flight)
    thread.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if metric_value(server.url, "jaxembed_active_requests") >= 1:
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the request never became active")

    server.proc.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    # Once the server shows it is draining (/ready 503, or the socket closed), new work is
    # not accepted: refused at the socket or answered 503 with Retry-After.
    draining = False
    deadline = time.monotonic() + 20
    while not draining and time.monotonic() < deadline:
        try:
            draining = httpx.get(server.url + "/ready", timeout=5).status_code == 503
        except httpx.TransportError:
            draining = True
        time.sleep(0.05)
    assert draining, "the server never started draining"
    try:
        late = httpx.post(server.url + "/v1/embeddings", json={"input": "late"}, timeout=10)
        assert late.status_code == 503 and "Retry-After" in late.headers
    except httpx.TransportError:
        pass
    thread.join(timeout=120)
    response = result["response"]
    assert response.status_code == 200 and len(response.json()["data"]) == 96
    assert server.proc.wait(timeout=60) == 0, server.log()
    with capsys.disabled():
        print(
            f"\ndrain: SIGTERM to exit {time.monotonic() - signalled:.1f} s with 96 texts in flight"
        )
    assert "drained" in server.log()
    server.stop()
