"""Optional OpenTelemetry tracing (`--otlp-endpoint`): one span per request, with a child
span for each phase the engine recorded — tokenisation, queue wait, device time (one per
batcher job: text, images) — and for encoding the response.

Imported only when the option is set, so a server without it loads nothing of
OpenTelemetry (the `tracing` extra: `pip install "jaxembed[tracing]"`). Spans are exported
over OTLP/HTTP in batches and flushed on shutdown; an incoming W3C `traceparent` header
makes the request span a child of the caller's trace.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from opentelemetry import propagate, trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

import jaxembed

TRACES_PATH = "/v1/traces"


def traces_url(endpoint: str) -> str:
    """`http://collector:4318` or the full `.../v1/traces` URL → the full URL."""
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith(TRACES_PATH) else endpoint + TRACES_PATH


class RequestTracer:
    def __init__(self, exporter: SpanExporter):
        resource = Resource.create(
            {"service.name": "jaxembed", "service.version": jaxembed.__version__}
        )
        self.provider = TracerProvider(resource=resource)
        self.provider.add_span_processor(BatchSpanProcessor(exporter))
        self.tracer = self.provider.get_tracer("jaxembed.server")

    @classmethod
    def to_endpoint(cls, endpoint: str) -> RequestTracer:
        return cls(OTLPSpanExporter(endpoint=traces_url(endpoint)))

    def record(
        self,
        name: str,
        start_ns: int,
        end_ns: int,
        attributes: Mapping[str, str | int],
        phases: Iterable[tuple[str, int, int]],
        headers: Mapping[str, str],
    ) -> None:
        """The request's span (started and ended at the given times) and its phases."""
        parent = propagate.extract(dict(headers))
        span = self.tracer.start_span(
            name, context=parent, kind=trace.SpanKind.SERVER, start_time=start_ns,
            attributes=dict(attributes),
        )  # fmt: skip
        context = trace.set_span_in_context(span, parent)
        for phase, phase_start, phase_end in phases:
            child = self.tracer.start_span(phase, context=context, start_time=phase_start)
            child.end(end_time=phase_end)
        if int(attributes.get("http.response.status_code", 200)) >= 500:
            span.set_status(trace.StatusCode.ERROR)
        span.end(end_time=end_ns)

    def shutdown(self) -> None:
        """Export what is buffered (called when the server stops)."""
        self.provider.shutdown()
