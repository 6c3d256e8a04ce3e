"""Prometheus metrics of one server (its own registry, so tests can run several apps).

Everything a model does is labelled `model` (its canonical served name), so one
process serving several models shows each on its own; HTTP-level series are not.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from jaxembed.engine.batcher import BatchStats

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._http_metrics(self.registry)
        self._model_metrics(self.registry)
        self._state_metrics(self.registry)

    def _http_metrics(self, r: CollectorRegistry) -> None:
        self.requests = Counter(
            "jaxembed_requests",
            "HTTP requests by route and status",
            ["route", "status"],
            registry=r,
        )
        self.errors = Counter("jaxembed_errors", "error responses by code", ["code"], registry=r)
        self.latency = Histogram(
            "jaxembed_request_latency_seconds",
            "request latency",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )

    def _model_metrics(self, r: CollectorRegistry) -> None:
        """What each model does, labelled `model`."""
        self.inputs = Counter("jaxembed_inputs", "inputs embedded", ["model"], registry=r)
        self.tokens = Counter("jaxembed_prompt_tokens", "tokens embedded", ["model"], registry=r)
        self.batches = Counter("jaxembed_batches", "device batches run", ["model"], registry=r)
        self.batch_rows = Histogram(
            "jaxembed_batch_rows",
            "real rows per device batch",
            ["model"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
        self.batch_requests = Histogram(
            "jaxembed_batch_requests",
            "requests sharing one device batch",
            ["model"],
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=r,
        )
        self.batch_fill = Histogram(
            "jaxembed_batch_fill_ratio",
            "real tokens / padded tokens per batch",
            ["model"],
            buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
            registry=r,
        )
        self.batch_seconds = Histogram(
            "jaxembed_batch_seconds",
            "dispatch-to-result time per batch",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )

    def _state_metrics(self, r: CollectorRegistry) -> None:
        """Gauges set at scrape time (queues, cache, readiness)."""
        self.queue_requests = Gauge(
            "jaxembed_queue_requests", "requests waiting for the device", ["model"], registry=r
        )
        self.queue_tokens = Gauge(
            "jaxembed_queue_tokens", "tokens waiting for the device", ["model"], registry=r
        )
        self.active_requests = Gauge(
            "jaxembed_active_requests", "requests accepted and not finished", ["model"], registry=r
        )
        self.cache_hits = Counter(
            "jaxembed_cache_hits", "inputs answered from the embedding cache", ["model"], registry=r
        )
        self.cache_misses = Counter(
            "jaxembed_cache_misses", "inputs computed on the device", ["model"], registry=r
        )
        self.cache_bytes = Gauge(
            "jaxembed_cache_bytes", "bytes held by the embedding cache", ["model"], registry=r
        )
        self.loop_tasks = Gauge(
            "jaxembed_event_loop_tasks",
            "asyncio tasks alive in the server's event loop (leak detector)",
            registry=r,
        )
        self.ready = Gauge("jaxembed_ready", "1 when warm-up has finished", registry=r)
        self.request_timeouts = Counter(
            "jaxembed_request_timeouts",
            "requests answered 504 `timeout` after --request-timeout",
            ["model"],
            registry=r,
        )
        self.lazy_compiles = Gauge(
            "jaxembed_lazy_compiles",
            "bucket programs compiled on first use after warm-up (beyond --warmup-max-len)",
            ["model"],
            registry=r,
        )

    def add_model(self, model: str) -> None:
        """Create every per-model series at zero, so dashboards see a model before its traffic."""
        for metric in self.registry._collector_to_names:
            if "model" in getattr(metric, "_labelnames", ()):
                metric.labels(model=model)

    def batch_observer(self, model: str) -> Callable[[BatchStats], None]:
        """What a model's batchers call after each device batch."""

        def observe(stats: BatchStats) -> None:
            self.batches.labels(model=model).inc()
            self.batch_rows.labels(model=model).observe(stats.rows)
            self.batch_requests.labels(model=model).observe(stats.requests)
            self.batch_fill.labels(model=model).observe(stats.fill_ratio)
            self.batch_seconds.labels(model=model).observe(stats.seconds)

        return observe

    def cache_observer(self, model: str) -> Callable[[int, int], None]:
        """What a model's service calls with (hits, misses) of each cache lookup."""

        def observe(hits: int, misses: int) -> None:
            self.cache_hits.labels(model=model).inc(hits)
            self.cache_misses.labels(model=model).inc(misses)

        return observe

    def render(self) -> bytes:
        return generate_latest(self.registry)
