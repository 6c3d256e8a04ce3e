"""JAX's persistent compilation cache, configured in exactly one place.

With it, a restart loads every bucket's program from disk instead of
compiling it again. The thresholds are set to zero because an embedding
server compiles many small programs, each worth caching.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

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
    return path
