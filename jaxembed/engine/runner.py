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
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxembed.engine.buckets import Bucket, BucketGrid, segments_per_row
from jaxembed.engine.memory import BucketMemory, from_compiled
from jaxembed.lora import LoraBank
from jaxembed.models.attention import record_choices
from jaxembed.models.heads import Scorer
from jaxembed.models.sparse import SparseEncoder
from jaxembed.parallel.sharding import (
    DATA_AXIS,
    activation_sharding,
    batch_sharding,
    replicated,
)
from jaxembed.pooling import l2_normalize, pool, pool_segments

log = logging.getLogger("jaxembed.engine")


def embed_forward(
    params: Any,
    input_ids: jax.Array,
    attention_mask: jax.Array,
    lora: Any = None,
    adapter_ids: jax.Array | None = None,
    *,
    module: nn.Module,
    pooling: str,
    normalize: bool,
) -> jax.Array:
    """The numeric path: params, padded batch (+ adapter stacks, row slots) → [B, D] float32."""
    hidden_bld = module.apply({"params": params}, input_ids, attention_mask, lora, adapter_ids)
    if isinstance(module, SparseEncoder):  # SPLADE: the model's own head pools
        pooled_bd = module.apply(
            {"params": params}, hidden_bld, attention_mask, method=SparseEncoder.sparse_pool
        )
    else:
        pooled_bd = pool(hidden_bld, attention_mask, pooling)
    return _finish(params, pooled_bd, module, normalize)


def _finish(params: Any, pooled: jax.Array, module: nn.Module, normalize: bool) -> jax.Array:
    """A head after pooling (a reranker's scores, an embedder's Dense modules), then the
    card's normalisation (never for rerankers)."""
    if isinstance(module, Scorer):
        pooled = module.apply({"params": params}, pooled, method=Scorer.score)
    return l2_normalize(pooled) if normalize else pooled


def embed_forward_packed(
    params: Any,
    input_ids: jax.Array,
    segments: jax.Array,
    *,
    module: nn.Module,
    pooling: str,
    normalize: bool,
    max_segments: int,
) -> jax.Array:
    """Packed rows (several sequences each, numbered by `segments`) → [B, K, D] float32."""
    hidden_bld = module.apply({"params": params}, input_ids, segments, packed=True)
    pooled_bkd = pool_segments(hidden_bld, segments, pooling, max_segments)
    return _finish(params, pooled_bkd, module, normalize)


class Runner(Protocol):
    """What the engine needs of a runner: the local `BucketRunner` and the multi-host
    `BroadcastingRunner` (engine/group_runner.py) both implement all of it."""

    grid: BucketGrid
    mesh: Mesh
    packed: bool
    lora_bank: LoraBank | None
    lazy_compiles: int
    compile_seconds: float
    attention_used: dict[int, str]

    def warmup(
        self, progress: Callable[[int, int, Bucket], None] | None = None, max_len: int | None = None
    ) -> float: ...

    def memory(self, bucket: Bucket) -> BucketMemory: ...

    def unhealthy_reason(self) -> str | None: ...

    def run(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        adapter_ids: np.ndarray | None = None,
    ) -> jax.Array: ...

    def run_packed(self, input_ids: np.ndarray, segments: np.ndarray) -> jax.Array: ...


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
        packed: bool = False,
    ):
        """`packed`: batches are packed rows (`run_packed`); warm-up compiles those programs."""
        self.grid = grid
        self.packed = packed
        self.mesh = mesh
        self._params = params
        self._batch_sharding = batch_sharding(mesh)
        self._spans_processes = len({d.process_index for d in mesh.devices.flat}) > 1
        forward = functools.partial(
            embed_forward, module=module, pooling=pooling, normalize=normalize
        )
        inputs = (
            jax.tree.map(lambda x: x.sharding, params),
            self._batch_sharding,
            self._batch_sharding,
        )
        self._jitted = jax.jit(forward, in_shardings=inputs, out_shardings=replicated(mesh))
        # The LoRA variant also takes the adapter stacks (replicated) and a slot per row.
        lora_inputs = (*inputs, replicated(mesh), NamedSharding(mesh, PartitionSpec(DATA_AXIS)))
        self._lora_jitted = jax.jit(
            forward, in_shardings=lora_inputs, out_shardings=replicated(mesh)
        )
        self._packed_jitted = {
            k: jax.jit(
                functools.partial(
                    embed_forward_packed,
                    module=module,
                    pooling=pooling,
                    normalize=normalize,
                    max_segments=k,
                ),
                in_shardings=inputs,
                out_shardings=replicated(mesh),
            )
            for k in {segments_per_row(b.seq) for b in grid.buckets()}
        }
        self._packed_compiled: dict[Bucket, Callable[..., jax.Array]] = {}
        self._compiled: dict[Bucket, Callable[..., jax.Array]] = {}
        self._lock = threading.Lock()
        self.compile_seconds = 0.0
        # Programs compiled on first use after warm-up (buckets beyond `warmup_max_len`).
        self.lazy_compiles = 0
        self._warm = False
        self.attention_used: dict[int, str] = {}  # length → implementation traced for it
        self.lora_bank: LoraBank | None = None
        self._lora_compiled: dict[Bucket, Callable[..., jax.Array]] = {}

    def _compile_into(
        self, programs: dict, jitted: Any, bucket: Bucket, lora: bool
    ) -> Callable[..., jax.Array]:
        """Compile (once) `jitted` for `bucket`; the LoRA variant also takes stacks and row slots."""
        with self._lock:
            if bucket not in programs:
                start = time.perf_counter()
                spec = jax.ShapeDtypeStruct(
                    (bucket.batch, bucket.seq), jnp.int32, sharding=self._batch_sharding
                )
                extra = ()
                if lora:  # same shapes whatever adapters the bank holds
                    extra = (
                        self.lora_bank.arrays(),
                        jax.ShapeDtypeStruct((bucket.batch,), jnp.int32),
                    )
                with activation_sharding(self.mesh), record_choices() as chosen:
                    lowered = jitted.lower(self._params, spec, spec, *extra)
                programs[bucket] = lowered.compile()
                self.attention_used[bucket.seq] = "+".join(sorted(chosen)) or "none"
                seconds = time.perf_counter() - start
                self.compile_seconds += seconds
                if self._warm:
                    self.lazy_compiles += 1
                    log.info(
                        "compiled bucket %dx%d on first use in %.1f s (beyond the warm-up range)",
                        bucket.batch,
                        bucket.seq,
                        seconds,
                    )
            return programs[bucket]

    def _compile(self, bucket: Bucket) -> Callable[..., jax.Array]:
        return self._compile_into(self._compiled, self._jitted, bucket, lora=False)

    def _compile_lora(self, bucket: Bucket) -> Callable[..., jax.Array]:
        return self._compile_into(self._lora_compiled, self._lora_jitted, bucket, lora=True)

    def _compile_packed(self, bucket: Bucket) -> Callable[..., jax.Array]:
        jitted = self._packed_jitted[segments_per_row(bucket.seq)]
        return self._compile_into(self._packed_compiled, jitted, bucket, lora=False)

    def warmup(
        self,
        progress: Callable[[int, int, Bucket], None] | None = None,
        max_len: int | None = None,
    ) -> float:
        """Compile (or load from the persistent cache) the grid's buckets; seconds taken.

        `max_len`: only buckets up to this length; longer ones compile on first use
        (counted in `lazy_compiles` and logged), so a 32k-token model is not held at
        start-up for lengths nobody may send. With adapters enabled every bucket also
        gets its adapter variant.
        """
        start = time.perf_counter()
        compile_base = self._compile_packed if self.packed else self._compile
        buckets = [b for b in self.grid.buckets() if max_len is None or b.seq <= max_len]
        programs = [(compile_base, b) for b in buckets]
        if self.lora_bank is not None:
            programs += [(self._compile_lora, b) for b in buckets]
        for i, (compile_one, bucket) in enumerate(programs):
            compile_one(bucket)
            if progress:
                progress(i + 1, len(programs), bucket)
        self._warm = True
        return time.perf_counter() - start

    def memory(self, bucket: Bucket) -> BucketMemory:
        """Bytes per device of `bucket`'s program (the kind warm-up compiles), compiled once."""
        compile_one = self._compile_packed if self.packed else self._compile
        compiled = compile_one(bucket)
        return from_compiled(compiled, bucket, self.attention_used[bucket.seq])

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

    def run(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        adapter_ids: np.ndarray | None = None,
    ) -> jax.Array:
        """Dispatch one padded batch; returns without waiting for the device (async dispatch).

        `adapter_ids`: each row's LoRA slot (0 = base); a batch without adapters runs the
        plain program, so enabling LoRA costs base-only batches nothing.
        The result is a [B, D] array on a local device (`np.asarray` reads it).
        """
        bucket = Bucket(*input_ids.shape)
        args = (self._params, self._to_mesh(input_ids), self._to_mesh(attention_mask))
        if adapter_ids is not None and adapter_ids.any():
            if self.lora_bank is None:
                raise ValueError("adapter ids given but LoRA is not enabled")
            compiled = self._lora_compiled.get(bucket) or self._compile_lora(bucket)
            result = compiled(*args, self.lora_bank.arrays(), adapter_ids.astype(np.int32))
        else:
            compiled = self._compiled.get(bucket) or self._compile(bucket)
            result = compiled(*args)
        # Replicated: the first local device holds every row, without a cross-host gather here.
        return result.addressable_data(0) if self._spans_processes else result

    def run_packed(self, input_ids: np.ndarray, segments: np.ndarray) -> jax.Array:
        """Dispatch one batch of packed rows (`buckets.pad_packed`); [B, K, D] on the device."""
        bucket = Bucket(*input_ids.shape)
        compiled = self._packed_compiled.get(bucket) or self._compile_packed(bucket)
        result = compiled(self._params, self._to_mesh(input_ids), self._to_mesh(segments))
        return result.addressable_data(0) if self._spans_processes else result
