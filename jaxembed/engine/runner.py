"""One ahead-of-time compiled forward + pool + normalise program per bucket.

Compiling explicitly per bucket (`jit(...).lower(...).compile()`) rather than
letting `jit` trace on demand makes the set of programs exactly the grid,
lets warm-up compile all of them before the server reports ready, and means
a shape outside the grid is a bug that fails loudly instead of a silent
mid-traffic compile.

Each program is compiled for the mesh (the pjit model): parameters keep the
shardings they were loaded with, the batch is split over `data`, activations
follow the logical-axis constraints, and the [B, D] result is replicated so
that every process (on a multi-host mesh: the leader) can read all rows.
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
from jax.sharding import Mesh

from jaxembed.engine.buckets import Bucket, BucketGrid
from jaxembed.parallel.sharding import activation_sharding, batch_sharding, replicated
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
        self,
        module: nn.Module,
        params: Any,
        *,
        pooling: str,
        normalize: bool,
        grid: BucketGrid,
        mesh: Mesh,
    ):
        self.grid = grid
        self.mesh = mesh
        self._params = params
        self._batch_sharding = batch_sharding(mesh)
        self._spans_processes = len({d.process_index for d in mesh.devices.flat}) > 1
        self._jitted = jax.jit(
            functools.partial(embed_forward, module=module, pooling=pooling, normalize=normalize),
            in_shardings=(
                jax.tree.map(lambda x: x.sharding, params),
                self._batch_sharding,
                self._batch_sharding,
            ),
            out_shardings=replicated(mesh),
        )
        self._compiled: dict[Bucket, Callable[..., jax.Array]] = {}
        self._lock = threading.Lock()
        self.compile_seconds = 0.0

    def _compile(self, bucket: Bucket) -> Callable[..., jax.Array]:
        with self._lock:
            if bucket not in self._compiled:
                start = time.perf_counter()
                spec = jax.ShapeDtypeStruct(
                    (bucket.batch, bucket.seq), jnp.int32, sharding=self._batch_sharding
                )
                with activation_sharding(self.mesh):
                    lowered = self._jitted.lower(self._params, spec, spec)
                self._compiled[bucket] = lowered.compile()
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

    def unhealthy_reason(self) -> str | None:
        """Why batches cannot run now, or None; a single-process runner is always able to."""
        return None

    def _to_mesh(self, array: np.ndarray) -> jax.Array | np.ndarray:
        if not self._spans_processes:
            return array  # the compiled program transfers it to its input sharding
        # Every process holds the same full batch and fills only its own devices' rows.
        return jax.make_array_from_callback(
            array.shape, self._batch_sharding, lambda index: array[index]
        )

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> jax.Array:
        """Dispatch one padded batch; returns without waiting for the device (async dispatch).

        The result is a [B, D] array on a local device (`np.asarray` reads it).
        """
        bucket = Bucket(*input_ids.shape)
        compiled = self._compiled.get(bucket) or self._compile(bucket)
        result = compiled(self._params, self._to_mesh(input_ids), self._to_mesh(attention_mask))
        # Replicated: the first local device holds every row, without a cross-host gather here.
        return result.addressable_data(0) if self._spans_processes else result
