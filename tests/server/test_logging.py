"""`--log-format json`: one JSON object per line, the request id on every line of a request."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from tests.helpers import ServerProcess


@pytest.fixture(scope="module")
def json_server():
    proc = ServerProcess(
        "--log-format", "json", "--seq-lengths", "16,32,64", "--allow-unknown-fields"
    )
    yield proc
    assert proc.stop() == 0, proc.log()


def _records(server, predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while True:
        lines = server.log_path.read_text(errors="replace").splitlines()
        records = [json.loads(line) for line in lines if line.startswith("{")]
        found = [r for r in records if predicate(r)]
        if found or time.monotonic() > deadline:
            return records, found
        time.sleep(0.1)


def test_lines_are_json_with_the_request_id(json_server):
    r = httpx.post(
        json_server.url + "/v1/embeddings",
        json={"input": ["first", "second"], "user": "bob"},
        headers={"X-Request-Id": "trace-42"},
        timeout=60,
    )
    assert r.status_code == 200 and r.headers["x-request-id"] == "trace-42"
    # The usage line is written before the access line (which follows the response out), so
    # wait for the access line itself, then read the request's other lines.
    _records(
        json_server,
        lambda r: r.get("request_id") == "trace-42" and r["logger"] == "jaxembed.access",
    )
    records, mine = _records(json_server, lambda r: r.get("request_id") == "trace-42")
    access = [r for r in mine if r["logger"] == "jaxembed.access"]
    assert access and access[0]["status"] == 200 and access[0]["path"] == "/v1/embeddings"
    assert access[0]["method"] == "POST" and access[0]["duration_ms"] > 0
    usage = [r for r in mine if r.get("user") == "bob"]
    assert usage and usage[0]["inputs"] == 2 and usage[0]["tokens"] > 0
    assert all({"ts", "level", "logger", "message"} <= set(r) for r in records)
    # Start-up lines (model load, Sanic's own) went through the same JSON formatter.
    assert any(r["message"].startswith("loaded all-minilm-l6-v2") for r in records)
    assert any(r["logger"].startswith("sanic") for r in records)
    # Every line of the process log is JSON, except output that bypasses logging entirely.
    lines = json_server.log_path.read_text(errors="replace").splitlines()
    assert sum(line.startswith("{") for line in lines) >= 0.9 * len(lines), lines[:20]


def test_errors_and_generated_ids_are_logged(json_server):
    r = httpx.post(json_server.url + "/v1/embeddings", json={"input": ""}, timeout=30)
    assert r.status_code == 400
    rid = r.headers["x-request-id"]
    assert len(rid) == 32
    _, mine = _records(
        json_server, lambda rec: rec.get("request_id") == rid and rec.get("status") == 400
    )
    assert mine

    # An id that is not a sane printable token is replaced, not written into logs.
    r = httpx.get(json_server.url + "/v1/models", headers={"X-Request-Id": "x" * 500})
    assert r.status_code == 200 and len(r.headers["x-request-id"]) == 32


def test_allowed_unknown_fields_are_dropped_with_a_warning_and_a_line(json_server):
    """--allow-unknown-fields: the request succeeds as if the field were absent; the answer
    says so in `Warning` and the log names the fields with the request's id."""
    r = httpx.post(
        json_server.url + "/v1/embeddings",
        json={"input": "hi", "dimension": 64},
        headers={"x-request-id": "typo-1"},
    )
    assert r.status_code == 200 and len(r.json()["data"][0]["embedding"]) == 384
    assert r.headers["warning"].startswith("299 ") and "dimension" in r.headers["warning"]
    _, mine = _records(json_server, lambda rec: rec.get("ignored_fields") == ["dimension"])
    assert mine and mine[0]["request_id"] == "typo-1"
    clean = httpx.post(json_server.url + "/v1/embeddings", json={"input": "hi"})
    assert clean.status_code == 200 and "warning" not in clean.headers
