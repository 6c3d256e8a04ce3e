"""Prometheus metrics of one server (its own registry, so tests can run several apps)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from jaxembed.engine.batcher import BatchStats

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
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
        self.inputs = Counter("jaxembed_inputs", "inputs embedded", registry=r)
        self.tokens = Counter("jaxembed_prompt_tokens", "tokens embedded", registry=r)
        self.batches = Counter("jaxembed_batches", "device batches run", registry=r)
        self.batch_rows = Histogram(
            "jaxembed_batch_rows",
            "real rows per device batch",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
        self.batch_requests = Histogram(
            "jaxembed_batch_requests",
            "requests sharing one device batch",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=r,
        )
        self.batch_fill = Histogram(
            "jaxembed_batch_fill_ratio",
            "real tokens / padded tokens per batch",
            buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
            registry=r,
        )
        self.batch_seconds = Histogram(
            "jaxembed_batch_seconds",
            "dispatch-to-result time per batch",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_requests = Gauge(
            "jaxembed_queue_requests", "requests waiting for the device", registry=r
        )
        self.queue_tokens = Gauge(
            "jaxembed_queue_tokens", "tokens waiting for the device", registry=r
        )
        self.active_requests = Gauge(
            "jaxembed_active_requests", "requests accepted and not finished", registry=r
        )
        self.cache_hits = Counter(
            "jaxembed_cache_hits", "inputs answered from the embedding cache", registry=r
        )
        self.cache_misses = Counter(
            "jaxembed_cache_misses", "inputs computed on the device", registry=r
        )
        self.cache_bytes = Gauge(
            "jaxembed_cache_bytes", "bytes held by the embedding cache", registry=r
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
            registry=r,
        )
        self.lazy_compiles = Gauge(
            "jaxembed_lazy_compiles",
            "bucket programs compiled on first use after warm-up (beyond --warmup-max-len)",
            registry=r,
        )

    def observe_batch(self, stats: BatchStats) -> None:
        self.batches.inc()
        self.batch_rows.observe(stats.rows)
        self.batch_requests.observe(stats.requests)
        self.batch_fill.observe(stats.fill_ratio)
        self.batch_seconds.observe(stats.seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
