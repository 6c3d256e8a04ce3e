"""One ahead-of-time compiled forward + pool + normalise program per bucket.

Compiling explicitly per bucket (`jit(...).lower(...).compile()`) rather than
letting `jit` trace on demand makes the set of programs exactly the grid,
lets warm-up compile all of them before the server reports ready, and means
a shape outside the grid is a bug that fails loudly instead of a silent
mid-traffic compile.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxembed.engine.buckets import Bucket, BucketGrid
from jaxembed.pooling import l2_normalize, pool


def embed_forward(
    params: Any,
    input_ids: jax.Array,
    attention_mask: jax.Array,
    *,
    module: nn.Module,
    pooling: str,
    normalize: bool,
) -> jax.Array:
    """The numeric path: params, padded batch → [B, D] float32 embeddings."""
    hidden_bld = module.apply({"params": params}, input_ids, attention_mask)
    pooled_bd = pool(hidden_bld, attention_mask, pooling)
    return l2_normalize(pooled_bd) if normalize else pooled_bd


class BucketRunner:
    def __init__(
        self, module: nn.Module, params: Any, *, pooling: str, normalize: bool, grid: BucketGrid
    ):
        self.grid = grid
        self._params = params
        self._jitted = jax.jit(
            functools.partial(embed_forward, module=module, pooling=pooling, normalize=normalize)
        )
        self._compiled: dict[Bucket, Callable[..., jax.Array]] = {}
        self._lock = threading.Lock()
        self.compile_seconds = 0.0

    def _compile(self, bucket: Bucket) -> Callable[..., jax.Array]:
        with self._lock:
            if bucket not in self._compiled:
                start = time.perf_counter()
                spec = jax.ShapeDtypeStruct((bucket.batch, bucket.seq), jnp.int32)
                self._compiled[bucket] = self._jitted.lower(self._params, spec, spec).compile()
                self.compile_seconds += time.perf_counter() - start
            return self._compiled[bucket]

    def warmup(self, progress: Callable[[int, int, Bucket], None] | None = None) -> float:
        """Compile (or load from the persistent cache) every bucket of the grid; seconds taken."""
        start = time.perf_counter()
        buckets = self.grid.buckets()
        for i, bucket in enumerate(buckets):
            self._compile(bucket)
            if progress:
                progress(i + 1, len(buckets), bucket)
        return time.perf_counter() - start

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> jax.Array:
        """Dispatch one padded batch; returns without waiting for the device (async dispatch)."""
        bucket = Bucket(*input_ids.shape)
        compiled = self._compiled.get(bucket) or self._compile(bucket)
        return compiled(self._params, input_ids, attention_mask)
