"""Prometheus metrics of one server (its own registry, so tests can run several apps).

Everything a model does is labelled `model` (its canonical served name), so one
process serving several models shows each on its own; HTTP-level series are not.

With `--api-workers N` the front-end processes and the engine process each count what
they see (requests in the front-ends, device batches in the engine) into prometheus_client's
multiprocess files, and `/metrics`, from whichever front-end answers it, sums them: one view
of the whole server.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import values as prometheus_values
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from jaxembed.engine.batching.batcher import BatchStats

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def enable_multiprocess(directory: str) -> None:
    """Count into files under `directory` (this process and the children it starts), so
    that one scrape sums every process; call before any metric is created."""
    os.environ[MULTIPROC_ENV] = directory
    prometheus_values.ValueClass = prometheus_values.get_value_class()


def forget_process(pid: int) -> None:
    """A process that exited: its live gauges stop counting (its counters stay summed)."""
    if os.environ.get(MULTIPROC_ENV):
        mark_process_dead(pid)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._http_metrics(self.registry)
        self._model_metrics(self.registry)
        self._state_metrics(self.registry)
        self._compile_metrics(self.registry)

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
            "jaxembed_queue_requests",
            "requests waiting for the device",
            ["model"],
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.queue_tokens = Gauge(
            "jaxembed_queue_tokens",
            "tokens waiting for the device",
            ["model"],
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.active_requests = Gauge(
            "jaxembed_active_requests",
            "requests accepted and not finished",
            ["model"],
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.cache_hits = Counter(
            "jaxembed_cache_hits", "inputs answered from the embedding cache", ["model"], registry=r
        )
        self.cache_misses = Counter(
            "jaxembed_cache_misses", "inputs computed on the device", ["model"], registry=r
        )
        self.cache_bytes = Gauge(
            "jaxembed_cache_bytes",
            "bytes held by the embedding cache",
            ["model"],
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.loop_tasks = Gauge(
            "jaxembed_event_loop_tasks",
            "asyncio tasks alive in the server's event loops (leak detector)",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.ready = Gauge(
            "jaxembed_ready",
            "1 when warm-up has finished",
            registry=r,
            multiprocess_mode="mostrecent",
        )
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
            multiprocess_mode="mostrecent",
        )

    def _compile_metrics(self, r: CollectorRegistry) -> None:
        self.compile_seconds = Gauge(
            "jaxembed_compile_seconds",
            "seconds spent compiling bucket programs (summed over programs)",
            ["model"],
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.compile_cache_hits = Gauge(
            "jaxembed_compile_cache_hits",
            "programs loaded from the persistent compile cache by the engine process",
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.compile_cache_misses = Gauge(
            "jaxembed_compile_cache_misses",
            "programs compiled anew by the engine process",
            registry=r,
            multiprocess_mode="mostrecent",
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
        directory = os.environ.get(MULTIPROC_ENV)
        if not directory:
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        MultiProcessCollector(merged, path=directory)
        return generate_latest(merged)
