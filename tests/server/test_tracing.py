"""OpenTelemetry tracing (`--otlp-endpoint`): a real server exports to an in-process OTLP/HTTP
collector; one request yields a request span with tokenize, queue, device and encode children."""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading

import httpx
import pytest

from tests.helpers import ServerProcess

pytest.importorskip("opentelemetry.sdk", reason="the tracing extra is not installed")


class Collector(http.server.ThreadingHTTPServer):
    """Accepts OTLP/HTTP protobuf exports on /v1/traces and keeps the spans."""

    def __init__(self):
        self.spans = []

        collector = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
                    ExportTraceServiceRequest,
                )

                body = self.rfile.read(int(self.headers["Content-Length"]))
                export = ExportTraceServiceRequest.FromString(body)
                for resource in export.resource_spans:
                    for scope in resource.scope_spans:
                        collector.spans.extend(scope.spans)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


def test_a_request_yields_its_span_tree():
    collector = Collector()
    server = ServerProcess("--otlp-endpoint", collector.url, "--no-warmup", "--cache-mb", "0")
    try:
        response = httpx.post(
            server.url + "/v1/embeddings",
            json={"input": ["traced text", "another"]},
            headers={"X-Request-Id": "trace-me-1"},
        )
        assert response.status_code == 200
    finally:
        assert server.stop() == 0, server.log()  # shutdown flushes the spans
    collector.shutdown()
    roots = [s for s in collector.spans if s.name == "POST /v1/embeddings"]
    assert len(roots) == 1, [s.name for s in collector.spans]
    root = roots[0]
    attributes = {a.key: a.value for a in root.attributes}
    assert attributes["jaxembed.request_id"].string_value == "trace-me-1"
    assert attributes["http.response.status_code"].int_value == 200
    assert attributes["jaxembed.model"].string_value == "all-minilm-l6-v2"
    children = {s.name: s for s in collector.spans if s.parent_span_id == root.span_id}
    assert {"tokenize", "queue", "device", "encode"} <= set(children)
    for child in children.values():
        assert child.trace_id == root.trace_id
        assert root.start_time_unix_nano <= child.start_time_unix_nano
        assert child.end_time_unix_nano <= root.end_time_unix_nano
    order = ["tokenize", "queue", "device", "encode"]
    starts = [children[name].start_time_unix_nano for name in order]
    assert starts == sorted(starts)


def test_without_the_option_nothing_of_opentelemetry_loads():
    """Every server module imported (tracing.py is imported by create_app only when asked)."""
    code = (
        "import sys\n"
        "import jaxembed_server.app, jaxembed_server.main, jaxembed_server.cli\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip().splitlines()[-1] == "[]"
