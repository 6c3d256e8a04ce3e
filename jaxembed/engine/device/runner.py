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

import concurrent.futures
import contextlib
import dataclasses
import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxembed.engine.batching.buckets import Bucket, BucketGrid, segments_per_row
from jaxembed.engine.device.memory import BucketMemory, cap_below, from_compiled
from jaxembed.errors import DeviceMemoryError
from jaxembed.lora import LoraBank
from jaxembed.models.attention import record_choices
from jaxembed.models.heads import Scorer
from jaxembed.models.sparse import SparseEncoder
from jaxembed.models.static import SparseStatic
from jaxembed.parallel.sharding import (
    DATA_AXIS,
    activation_sharding,
    batch_sharding,
    replicated,
)
from jaxembed.pooling import l2_normalize, pool, pool_segments

log = logging.getLogger("jaxembed.engine")
COMPILE_THREADS_ENV = "JAXEMBED_COMPILE_THREADS"


TRACE_LOCK = threading.Lock()  # one trace (jit(...).lower) at a time, in every runner


def compile_threads() -> int:
    """Programs compiled at once at warm-up: $JAXEMBED_COMPILE_THREADS, else one per core this
    process may use, at most 16 (XLA compiles outside the GIL; lowering is short)."""
    if os.environ.get(COMPILE_THREADS_ENV):
        return max(1, int(os.environ[COMPILE_THREADS_ENV]))
    return max(1, min(len(os.sched_getaffinity(0)), 16))


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
    elif isinstance(module, SparseStatic):  # already one vector per row
        pooled_bd = hidden_bld
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
    compile_log: list[tuple[Bucket, float]]
    attention_used: dict[int, str]
    checks_memory_on_compile: bool

    def warmup(
        self,
        progress: Callable[[int, int, Bucket], None] | None = None,
        max_len: int | None = None,
        background: bool = False,
    ) -> float: ...

    def memory(self, bucket: Bucket) -> BucketMemory: ...

    def memories(self, buckets: Sequence[Bucket]) -> list[BucketMemory]: ...

    def unhealthy_reason(self) -> str | None: ...

    def planning_grid(self) -> BucketGrid: ...

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
        pad_id: int = 0,
    ):
        """`packed`: batches are packed rows (`run_packed`); warm-up compiles those programs.
        `pad_id`: the model's padding token (what fills a batch run in a larger bucket)."""
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
        self._pending: dict[tuple[int, Bucket], concurrent.futures.Future] = {}
        self.compile_seconds = 0.0  # summed over programs (compiles overlap: more than wall time)
        self.compile_log: list[tuple[Bucket, float]] = []
        # Programs compiled on first use after warm-up (buckets beyond `warmup_max_len`).
        self.lazy_compiles = 0
        self._warm = False
        self._warmup_max_len: int | None = None  # lengths beyond it compile on first use
        self.attention_used: dict[int, str] = {}  # length → implementation traced for it
        self.lora_bank: LoraBank | None = None
        self._lora_compiled: dict[Bucket, Callable[..., jax.Array]] = {}
        self._background: threading.Thread | None = None  # the rest of the grid compiling
        self._stop_compiling = threading.Event()
        self.substitutions = 0  # batches run in a larger compiled bucket meanwhile
        self.pad_id = pad_id
        # Bytes per device a program may need, once the start-up memory check has set it:
        # programs compiled after it (the background's, lazy ones) are checked as they compile.
        self.memory_budget: int | None = None

    @property
    def checks_memory_on_compile(self) -> bool:
        """Whether programs compiled after the memory check are checked as they compile (so
        the check need not compile every length up front). Not across processes, where every
        process must plan the same grid: there the check covers every length at start-up."""
        return not self._spans_processes

    def _compile_into(
        self, programs: dict, jitted: Any, bucket: Bucket, lora: bool
    ) -> Callable[..., jax.Array]:
        """Compile (once) `jitted` for `bucket`; the LoRA variant also takes stacks and row slots.

        Thread-safe without serialising: each program compiles once, in the first thread that
        asks; others asking for the same program wait for it, others' programs compile side
        by side (XLA compiles outside the GIL), which is what makes warm-up parallel.
        """
        compiled = programs.get(bucket)
        if compiled is not None:
            return compiled
        key = (id(programs), bucket)
        with self._lock:
            if bucket in programs:
                return programs[bucket]
            pending = self._pending.get(key)
            owner = pending is None
            if owner:
                pending = self._pending[key] = concurrent.futures.Future()
        if not owner:
            return pending.result()
        try:
            compiled = self._build(jitted, bucket, lora)
            if not lora:
                self._check_memory(compiled, bucket)
        except BaseException as e:
            with self._lock:
                del self._pending[key]
            pending.set_exception(e)
            raise
        with self._lock:
            programs[bucket] = compiled
            del self._pending[key]
        pending.set_result(compiled)
        return compiled

    def _build(self, jitted: Any, bucket: Bucket, lora: bool) -> Callable[..., jax.Array]:
        start = time.perf_counter()
        spec = jax.ShapeDtypeStruct(
            (bucket.batch, bucket.seq), jnp.int32, sharding=self._batch_sharding
        )
        extra = ()
        if lora:  # same shapes whatever adapters the bank holds
            extra = (self.lora_bank.arrays(), jax.ShapeDtypeStruct((bucket.batch,), jnp.int32))
        # Tracing runs one program at a time: Flax builds and reads module classes while it
        # traces (a concurrent trace once failed with "dictionary changed size during
        # iteration"), and the attention choice is recorded per trace. XLA's compile, the
        # long part, runs side by side outside the GIL.
        with TRACE_LOCK, activation_sharding(self.mesh), record_choices() as chosen:
            lowered = jitted.lower(self._params, spec, spec, *extra)
        compiled = lowered.compile()
        seconds = time.perf_counter() - start
        with self._lock:
            self.attention_used[bucket.seq] = "+".join(sorted(chosen)) or "none"
            self.compile_seconds += seconds
            self.compile_log.append((bucket, seconds))
            if self._warm:
                self.lazy_compiles += 1
        if self._warm:
            log.info(
                "compiled bucket %dx%d on first use in %.1f s (beyond the warm-up range)",
                bucket.batch,
                bucket.seq,
                seconds,
            )
        return compiled

    def _check_memory(self, compiled: Any, bucket: Bucket) -> None:
        """Against `memory_budget`: a program over it is never kept; its length's batches are
        capped below it (the grid, so the planner stops asking) and DeviceMemoryError raised,
        which the batcher treats as out of memory (retried in halves)."""
        if self.memory_budget is None:
            return
        memory = from_compiled(compiled, bucket, self.attention_used.get(bucket.seq, "?"))
        if memory.total_bytes <= self.memory_budget:
            return
        with self._lock:  # unless another thread already capped this length lower
            if bucket.batch <= self.grid.max_rows(bucket.seq):
                capped = cap_below(self.grid, bucket, memory, self.memory_budget)
                self.grid = capped or self.grid
        raise DeviceMemoryError(
            f"bucket {bucket.batch}x{bucket.seq} needs {memory.total_bytes / 2**30:.2f} GiB "
            f"per device, more than the {self.memory_budget / 2**30:.2f} GiB allowed"
        )

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
        background: bool = False,
    ) -> float:
        """Compile (or load from the persistent cache) the grid's buckets; seconds taken.

        `max_len`: only buckets up to this length; longer ones compile on first use
        (counted in `lazy_compiles` and logged), so a 32k-token model is not held at
        start-up for lengths nobody may send. With adapters enabled every bucket also
        gets its adapter variant. Programs compile side by side (`compile_threads`).

        `background`: return once a *ready set* is compiled — the largest batch of the
        shortest and of the longest warm-up length, which between them can run any input
        (short ones cheaply) — and compile the rest on a thread. Until the rest is done the
        planner plans only lengths whose largest batch is compiled (`planning_grid`), and a
        smaller batch of such a length runs in that largest one (`_substitute`): no batch
        waits for a compile. Not on a multi-process mesh, where every process must run the
        same program.
        """
        start = time.perf_counter()
        programs = self._warmup_programs(max_len)
        background = background and not self._spans_processes
        self._warmup_max_len = max_len
        ready = self._ready_set(b for _, b in programs)
        first = [p for p in programs if p[1] in ready]
        later = [p for p in programs if p[1] not in ready] if background else []
        later = _by_usefulness(programs, later)
        if not background:
            first = programs
        done = self._compile_all(first, progress, 0, len(programs))
        if later:
            self._background = threading.Thread(
                target=self._compile_rest,
                args=(later, progress, done, len(programs)),
                name="jaxembed-compile-rest",
                daemon=True,
            )
            self._background.start()
        else:
            self._warm = True
        return time.perf_counter() - start

    def _warmup_programs(self, max_len: int | None) -> list[tuple[Callable, Bucket]]:
        compile_base = self._compile_packed if self.packed else self._compile
        buckets = [b for b in self.grid.buckets() if max_len is None or b.seq <= max_len]
        programs = [(compile_base, b) for b in buckets]
        if self.lora_bank is not None:
            programs += [(self._compile_lora, b) for b in buckets]
        return programs

    @staticmethod
    def _ready_set(buckets) -> set[Bucket]:
        """The largest batch of the shortest and the longest length: the longest runs any
        input (packed rows, or one padded row each), the shortest keeps short requests from
        paying for the longest's length while the rest of the grid compiles."""
        largest = _largest_batches(buckets)
        if not largest:
            return set()
        ends = {min(largest), max(largest)}
        return {Bucket(largest[seq], seq) for seq in ends}

    def planning_grid(self) -> BucketGrid:
        """The grid the planner may use now: all of it once warm; while the rest compiles in
        the background, the lengths whose largest batch (and its adapter variant, with
        adapters on) is compiled, and the lengths beyond warm-up, which compile on first use
        whatever happens."""
        if self._warm or self._background is None:
            return self.grid
        grid = self.grid
        kinds = [self._packed_compiled if self.packed else self._compiled]
        if self.lora_bank is not None:
            kinds.append(self._lora_compiled)
        limit = self._warmup_max_len
        ready = tuple(
            seq
            for seq in grid.seq_lengths
            if (limit is not None and seq > limit)
            or all(Bucket(grid.max_rows(seq), seq) in programs for programs in kinds)
        )
        return dataclasses.replace(grid, seq_lengths=ready) if ready else grid

    def _compile_all(
        self, programs, progress, done: int, total: int, *, background: bool = False
    ) -> int:
        """`programs` compiled by `compile_threads()` threads taking the next one in turn,
        until all are done or `stop_background` says stop; progress is reported in order.

        `background` (the rest of the grid, behind traffic): half the threads, each at a
        lower CPU priority, so batches being served keep the cores they need."""
        workers = max(1, compile_threads() // 2) if background else compile_threads()
        pending = iter(programs)
        lock = threading.Lock()
        count = [done]
        errors: list[BaseException] = []

        def work() -> None:
            if background:
                _lower_thread_priority()
            while not self._stop_compiling.is_set():
                with lock:
                    item = next(pending, None)
                if item is None:
                    return
                compile_one, bucket = item
                try:
                    compile_one(bucket)
                except DeviceMemoryError:  # logged; the grid no longer plans it
                    pass
                except BaseException as e:  # raised to the caller once every thread stops
                    errors.append(e)
                    return
                with lock:
                    count[0] += 1
                    if progress:
                        progress(count[0], total, bucket)

        threads = [
            threading.Thread(target=work, name=f"jaxembed-compile-{i}", daemon=True)
            for i in range(min(len(programs), workers) or 1)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return count[0]

    def _compile_rest(self, programs, progress, done: int, total: int) -> None:
        try:
            self._compile_all(programs, progress, done, total, background=True)
        except Exception:  # a later bucket that fails to compile fails its first use instead
            log.exception("compiling the rest of the bucket grid in the background failed")
        finally:
            self._warm = True

    def stop_background(self, timeout: float = 60.0) -> None:
        """Stop compiling the rest of the grid (programs not started are dropped, those under
        way finish) and wait for it: a process must not exit with XLA compiling on a thread."""
        if self._background is None:
            return
        self._stop_compiling.set()
        self._background.join(timeout)

    def _substitute(self, programs: dict, bucket: Bucket) -> Bucket | None:
        """The smallest compiled bucket that holds `bucket`'s batch (more rows, longer rows),
        while the grid still compiles in the background; None once it is done."""
        if self._warm or self._background is None:
            return None
        holders = [b for b in list(programs) if b.batch >= bucket.batch and b.seq >= bucket.seq]
        return min(holders, key=lambda b: (b.batch * b.seq, b.seq), default=None)

    def memory(self, bucket: Bucket) -> BucketMemory:
        """Bytes per device of `bucket`'s program (the kind warm-up compiles), compiled once."""
        compile_one = self._compile_packed if self.packed else self._compile
        compiled = compile_one(bucket)
        return from_compiled(compiled, bucket, self.attention_used[bucket.seq])

    def memories(self, buckets: Sequence[Bucket]) -> list[BucketMemory]:
        """`memory` of several buckets, their programs compiled side by side: the start-up
        memory check costs about one compile, not one per length (the programs are kept
        for warm-up, whose ready set they are)."""
        compile_one = self._compile_packed if self.packed else self._compile
        self._compile_all([(compile_one, b) for b in buckets], None, 0, len(buckets))
        return [self.memory(b) for b in buckets]

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
        lora = adapter_ids is not None and adapter_ids.any()
        if lora and self.lora_bank is None:
            raise ValueError("adapter ids given but LoRA is not enabled")
        programs = self._lora_compiled if lora else self._compiled
        compile_one = self._compile_lora if lora else self._compile
        bucket = Bucket(*input_ids.shape)
        compiled = programs.get(bucket)
        if compiled is None and (holder := self._substitute(programs, bucket)) is not None:
            self.substitutions += 1
            input_ids = _grow(input_ids, holder, self.pad_id)
            attention_mask = _grow(attention_mask, holder, 0)
            adapter_ids = (
                None if not lora else _grow(adapter_ids[:, None], Bucket(holder.batch, 1), 0)[:, 0]
            )
            compiled = programs[holder]
        compiled = compiled or compile_one(bucket)
        args = (self._params, self._to_mesh(input_ids), self._to_mesh(attention_mask))
        if lora:
            result = compiled(*args, self.lora_bank.arrays(), adapter_ids.astype(np.int32))
        else:
            result = compiled(*args)
        # Replicated: the first local device holds every row, without a cross-host gather here.
        return result.addressable_data(0) if self._spans_processes else result

    def run_packed(self, input_ids: np.ndarray, segments: np.ndarray) -> jax.Array:
        """Dispatch one batch of packed rows (`buckets.pad_packed`); [B, K, D] on the device."""
        bucket = Bucket(*input_ids.shape)
        compiled = self._packed_compiled.get(bucket)
        if compiled is None and (holder := self._substitute(self._packed_compiled, bucket)):
            self.substitutions += 1
            input_ids = _grow(input_ids, holder, self.pad_id)
            segments = _grow(segments, holder, 0)  # segment 0: padding
            compiled = self._packed_compiled[holder]
        compiled = compiled or self._compile_packed(bucket)
        result = compiled(self._params, self._to_mesh(input_ids), self._to_mesh(segments))
        return result.addressable_data(0) if self._spans_processes else result


def _largest_batches(buckets) -> dict[int, int]:
    """Each length's largest batch among `buckets`."""
    largest: dict[int, int] = {}
    for b in buckets:
        largest[b.seq] = max(largest.get(b.seq, 0), b.batch)
    return largest


def _by_usefulness(grid_programs: list, later: list) -> list:
    """The background's order for `later`: each length's largest batch first (shortest length
    first; each one lets the planner use its length, `planning_grid`), then single rows (what
    a lone query runs in, instead of a larger batch's padding), then the rest, smaller lengths
    first. "Largest" is over the whole grid's `grid_programs`."""
    largest = _largest_batches(b for _, b in grid_programs)

    def rank(item) -> tuple[int, int, int]:
        bucket = item[1]
        if bucket.batch == largest[bucket.seq]:
            return (0, bucket.seq, 0)
        return (1 if bucket.batch == 1 else 2, bucket.seq, bucket.batch)

    return sorted(later, key=rank)


def _lower_thread_priority(niceness: int = 10) -> None:
    """This thread (and threads it starts) at a lower CPU priority: on Linux a thread has its
    own nice value (setpriority on its thread id); elsewhere a no-op."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)


def _grow(array: np.ndarray, bucket: Bucket, fill: int) -> np.ndarray:
    """`array` [b, s] placed at the top left of a [bucket.batch, bucket.seq] array of `fill`:
    the extra rows and positions are padding, which no real position ever reads."""
    out = np.full((bucket.batch, bucket.seq), fill, dtype=array.dtype)
    out[: array.shape[0], : array.shape[1]] = array
    return out
