"""JAX's persistent compilation cache, configured in exactly one place.

With it, a restart loads every bucket's program from disk instead of
compiling it again. The thresholds are set to zero because an embedding
server compiles many small programs, each worth caching.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import jax
from jax import monitoring

from jaxembed.registry import home_dir

ENV_VAR = "JAXEMBED_COMPILE_CACHE"


def default_cache_dir() -> Path:
    """`$JAXEMBED_COMPILE_CACHE`, else `xla/` in `$JAXEMBED_HOME` (default ~/.cache/jaxembed)."""
    return Path(os.environ.get(ENV_VAR) or home_dir() / "xla")


def enable_compile_cache(directory: str | os.PathLike | None = None) -> Path:
    """Point JAX's persistent cache at `directory` (default: $JAXEMBED_COMPILE_CACHE or ~/.cache)."""
    path = Path(directory) if directory is not None else default_cache_dir()
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    cache_counts()  # count hits and misses from the first compile on
    return path


HIT_EVENT = "/jax/compilation_cache/cache_hits"
MISS_EVENT = "/jax/compilation_cache/cache_misses"


class CacheCounts:
    """Programs this process loaded from the persistent cache (hits) and compiled anew
    (misses), from JAX's own monitoring events: for the warm-up log and /metrics."""

    def __init__(self) -> None:
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()
        monitoring.register_event_listener(self._event)

    def _event(self, event: str, **_) -> None:
        if event in (HIT_EVENT, MISS_EVENT):
            with self._lock:
                if event == HIT_EVENT:
                    self.hits += 1
                else:
                    self.misses += 1


_counts: CacheCounts | None = None


def cache_counts() -> CacheCounts:
    """The process's one counter (registered with JAX on first use)."""
    global _counts
    if _counts is None:
        _counts = CacheCounts()
    return _counts
