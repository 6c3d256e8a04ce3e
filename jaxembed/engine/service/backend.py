"""The boundary between a model's two halves: what the input half (`EmbeddingService`) asks
of the device half (`RowEngine`, or a stand-in for one in another process), and the plain
data that crosses it. No JAX."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Protocol

import numpy as np

from jaxembed.engine.batching.batcher import BatchStats, FaultHook
from jaxembed.engine.request.jobs import AdapterRef, EmbedJob
from jaxembed.engine.request.progress import RequestProgress

# texts → (their vectors, tokens per text): the input half's text path, which a multimodal
# item's text goes through (cache, adapters, chunking included).
TextPath = Callable[[list[str]], Awaitable[tuple[np.ndarray, list[int]]]]
# (hits, misses) of each cache lookup.
CacheHook = Callable[[int, int], None]


@dataclasses.dataclass(frozen=True)
class RowOptions:
    """How to run a request's rows: plain data, the same in-process and over the transport."""

    priority: int = 0
    adapter: AdapterRef | None = None
    # time.monotonic() by which the job must be done (None: no deadline); monotonic clocks
    # are one clock for every process of a host.
    deadline: float | None = None


@dataclasses.dataclass(frozen=True)
class ServiceHooks:
    """Observers and test hooks (metrics live at the edge, not in the engine)."""

    on_batch: Callable[[BatchStats], None] | None = None
    on_cache: CacheHook | None = None  # (hits, misses) of every lookup
    fault_hook: FaultHook | None = None


@dataclasses.dataclass(frozen=True)
class EngineFacts:
    """What the loaded model is, beyond its card (for /info and logs): plain data."""

    dtype: str
    token_budget: int
    id2label: dict[str, str]
    calibration_key: tuple[str, ...]
    # The devices are the host's own CPU cores: host work beside them (tokenising the next
    # slice of a request) competes for the same cores instead of overlapping.
    host_devices: bool = False


@dataclasses.dataclass(frozen=True)
class EngineStatus:
    """A model's engine at a glance (health, queues), for /ready and /metrics."""

    warm: bool
    unhealthy: str | None
    queued_requests: int
    queued_tokens: int
    active_requests: int
    cache_bytes: int
    lazy_compiles: int
    compile_seconds: float = 0.0  # summed over this model's programs
    cache_hits: int = 0  # programs this process loaded from the persistent compile cache
    cache_misses: int = 0  # ... and compiled anew
    programs: int = 0  # bucket programs of this model compiled so far
    adapters: tuple[str, ...] = ()  # LoRA adapters resident now


class RowBackend(Protocol):
    """What the input half needs of the device half (RowEngine, or its remote stand-in)."""

    async def embed_rows(
        self, rows: list[np.ndarray], options: RowOptions, progress: RequestProgress
    ) -> np.ndarray: ...

    async def embed_items(
        self, job: EmbedJob, progress: RequestProgress, texts: TextPath
    ) -> tuple[np.ndarray, int]: ...

    def check_capacity(self) -> None: ...

    def unhealthy(self) -> str | None:
        """Why the engine cannot serve now, or None: asked on every request, so cheap (not
        a whole `status()`)."""
        ...

    def status(self) -> EngineStatus: ...

    def facts(self) -> EngineFacts: ...

    def start(self, *, warmup: bool = True, progress=None) -> None: ...

    def close(self, timeout: float = 30.0) -> bool: ...
