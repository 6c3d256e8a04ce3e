"""Dynamic batching: concurrent requests → token-budget bucket batches → results per request.

Two threads do the device work so the event loop never blocks on it:
the *dispatcher* picks rows from pending requests (priority with aging, and
turns between requests of one level: engine/scheduler.py), plans them into
length-sorted bucket batches and dispatches them
(JAX returns at once); the *collector* waits for each batch's result, writes
rows back into their request's output and resolves the request's future on
its event loop. While the device works on step n, new requests queue up and
form step n+1 — batching without any fixed wait, so a lone request when idle
goes out at once.

A batch whose computation fails is retried: split in halves at smaller buckets
when the device ran out of memory, request by request otherwise, so a request
that breaks the engine fails alone and the others in its batch still succeed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from jaxembed.engine.buckets import (
    Bucket,
    PlannedBatch,
)
from jaxembed.engine.device_share import DEFAULT_SECONDS_PER_TOKEN, DeviceShare
from jaxembed.engine.embedder import Embedder
from jaxembed.engine.scheduler import ThroughputEstimate, take_step
from jaxembed.engine.workload import DeviceResult, Workload
from jaxembed.errors import EngineError, EngineUnavailableError, OverloadedError

log = logging.getLogger(__name__)

FaultHook = Callable[[Sequence[np.ndarray]], None]


class TextWorkload(Workload):
    """Token-id rows through an Embedder's bucket grid and runner (packed when it packs)."""

    def __init__(self, embedder: Embedder):
        self.embedder = embedder
        self.dimensions = embedder.dimensions
        self.step_budget = embedder.grid.token_budget

    def size(self, row: np.ndarray) -> int:
        return len(row)

    def cost(self, row: np.ndarray) -> int:
        if self.embedder.packing:
            return len(row)  # packed rows waste (almost) nothing
        return self.embedder.grid.seq_bucket(len(row))

    def plan(self, rows: Sequence[np.ndarray]) -> list[PlannedBatch]:
        return self.embedder.plan(rows)

    def run(
        self, rows: Sequence[np.ndarray], planned: PlannedBatch, slots: np.ndarray | None
    ) -> DeviceResult:
        return self.embedder.dispatch(rows, planned, slots)

    def warmup(self, progress=None) -> float:
        if self.embedder.fused is not None:
            return 0.0  # a vision-language model's jobs run on its own programs, never these
        return self.embedder.runner.warmup(progress, self.embedder.warmup_max_len)


@dataclasses.dataclass(frozen=True)
class BatchStats:
    """What one device batch held, for metrics."""

    bucket: Bucket
    rows: int
    requests: int
    real_tokens: int
    seconds: float

    @property
    def fill_ratio(self) -> float:
        return self.real_tokens / (self.bucket.batch * self.bucket.seq)


@dataclasses.dataclass(eq=False)
class _Job:
    token_lists: list[np.ndarray]
    priority: int
    seq: int
    enqueued: float
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    out: np.ndarray
    adapter_slot: int = 0  # LoRA slot of every row (0 = base model)
    next_row: int = 0  # rows before this one have been dispatched
    remaining: int = 0  # rows not yet written to `out`
    served_tokens: int = 0  # tokens dispatched so far (fair share within a priority level)
    done: bool = False
    progress: RequestProgress | None = None
    enqueued_ns: int = 0  # time.time_ns() when queued, and when its first row was dispatched
    dispatched_ns: int | None = None

    @property
    def rows_done(self) -> int:
        return len(self.token_lists) - self.remaining

    def queued_tokens(self, workload: Workload) -> int:
        return sum(workload.size(t) for t in self.token_lists[self.next_row :])


@dataclasses.dataclass
class RequestProgress:
    """Rows of a request that the device finished (a timed-out request reports them), and the
    phases it went through — (name, start, end) in `time.time_ns()` — for tracing."""

    rows_done: int = 0
    phases: list[tuple[str, int, int]] = dataclasses.field(default_factory=list)

    def phase(self, name: str, start_ns: int, end_ns: int) -> None:
        self.phases.append((name, start_ns, end_ns))  # list.append: safe from any thread

    @contextlib.contextmanager
    def timed(self, name: str) -> Iterator[None]:
        start = time.time_ns()
        try:
            yield
        finally:
            self.phase(name, start, time.time_ns())


@dataclasses.dataclass
class _Row:
    job: _Job
    index: int  # row within job

    @property
    def tokens(self) -> np.ndarray:
        return self.job.token_lists[self.index]


@dataclasses.dataclass
class _Dispatched:
    rows: list[_Row]
    bucket: Bucket
    result: object  # jax.Array, or the exception raised at dispatch
    started: float
    shared: bool = False  # holds a turn of the DeviceShare until collected


class Batcher:
    """Async front of an `Embedder` (or any Workload): `await batcher.embed(rows, priority)`."""

    def __init__(
        self,
        embedder: Embedder | Workload,
        *,
        max_queued_requests: int = 1024,
        max_queued_tokens: int = 1_000_000,
        aging_seconds: float = 1.0,
        step_batches: int = 8,
        pipeline_depth: int = 2,
        on_batch: Callable[[BatchStats], None] | None = None,
        fault_hook: FaultHook | None = None,
        share: DeviceShare | None = None,
        name: str = "default",
    ):
        """`share`: devices shared with other batchers (other models, images): each batch
        waits for a fair turn (engine/device_share.py); `name` identifies this batcher there."""
        self.workload = embedder if isinstance(embedder, Workload) else TextWorkload(embedder)
        self.max_queued_requests = max_queued_requests
        self.max_queued_tokens = max_queued_tokens
        self.aging_seconds = aging_seconds
        self.step_tokens = self.workload.step_budget * step_batches
        self._on_batch = on_batch
        self._fault_hook = fault_hook
        self._share = share
        self.name = name
        self._cond = threading.Condition()
        self._pending: list[_Job] = []  # jobs with rows not yet dispatched
        self._queued_tokens = 0
        self._seq = itertools.count()
        self._inflight: queue.Queue[_Dispatched | None] = queue.Queue(maxsize=pipeline_depth)
        self._stopping = False
        self._accepting = True
        self.ready = threading.Event()
        self.warmup_seconds: float | None = None
        self._threads: list[threading.Thread] = []
        self._active_jobs = 0
        self.throughput = ThroughputEstimate()

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, *, warmup: bool = True, warmup_progress=None) -> None:
        """Start the worker threads; warm-up (compiling every bucket) runs first, off the caller."""

        def dispatcher() -> None:
            if warmup:
                self.warmup_seconds = self.workload.warmup(warmup_progress)
            self.ready.set()
            self._dispatch_loop()

        self._threads = [
            threading.Thread(target=dispatcher, name="jaxembed-dispatch", daemon=True),
            threading.Thread(target=self._collect_loop, name="jaxembed-collect", daemon=True),
        ]
        for t in self._threads:
            t.start()

    def stop_accepting(self) -> None:
        with self._cond:
            self._accepting = False

    def close(self, timeout: float = 30.0) -> bool:
        """Stop accepting, finish queued work (up to `timeout` s), stop threads. True if drained."""
        self.stop_accepting()
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._active_jobs and time.monotonic() < deadline:
                self._cond.wait(timeout=0.05)
            drained = self._active_jobs == 0
            self._stopping = True
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout=max(0.1, deadline - time.monotonic()))
        return drained

    # -- queue state ------------------------------------------------------------------------

    @property
    def queued_requests(self) -> int:
        return len(self._pending)

    @property
    def queued_tokens(self) -> int:
        return self._queued_tokens

    @property
    def active_requests(self) -> int:
        return self._active_jobs

    def check_capacity(self) -> None:
        """Refuse at once when the queue is already full: a flooded model answers its 503s
        before tokenising anything, which keeps the flood's cost off everyone else."""
        with self._cond:
            full = len(self._pending) >= self.max_queued_requests
            waiting = len(self._pending)
        if full:
            raise OverloadedError(
                f"the queue is full ({waiting} requests waiting)", retry_after=1.0
            )

    def expected_seconds(self, tokens: int) -> float | None:
        """How long `tokens` take at the measured device throughput, even with the device to
        itself (None until enough batches were measured)."""
        rate = self.throughput.tokens_per_second
        return None if rate is None else tokens / rate

    # -- submitting -------------------------------------------------------------------------

    async def embed(
        self,
        token_lists: Sequence[np.ndarray],
        priority: int = 0,
        adapter_slot: int = 0,
        progress: RequestProgress | None = None,
    ) -> np.ndarray:
        """Embeddings of validated token lists, [N, D] float32 in order. Lower priority = sooner.

        `adapter_slot`: a pinned LoRA slot (`Embedder.adapter_slot`); rows of different
        adapters are batched together. `progress` counts the rows finished, also when the
        caller gives up (a timeout cancels the call: undispatched rows are dropped).
        """
        loop = asyncio.get_running_loop()
        tokens = sum(self.workload.size(t) for t in token_lists)
        job = _Job(
            token_lists=list(token_lists),
            priority=priority,
            seq=next(self._seq),
            enqueued=time.monotonic(),
            loop=loop,
            future=loop.create_future(),
            out=np.empty((len(token_lists), self.workload.dimensions), dtype=np.float32),
            remaining=len(token_lists),
            adapter_slot=adapter_slot,
            progress=progress,
            enqueued_ns=time.time_ns(),
        )
        with self._cond:
            if not self._accepting:
                raise OverloadedError("the server is shutting down", retry_after=5.0)
            if self._pending and (
                len(self._pending) >= self.max_queued_requests
                or self._queued_tokens + tokens > self.max_queued_tokens
            ):
                raise OverloadedError(
                    f"the queue is full ({len(self._pending)} requests, {self._queued_tokens} tokens waiting)",
                    retry_after=1.0,
                )
            self._pending.append(job)
            self._queued_tokens += tokens
            self._active_jobs += 1
            self._cond.notify_all()
        try:
            return await job.future
        except asyncio.CancelledError:
            self._cancel(job)
            raise

    def _cancel(self, job: _Job) -> None:
        """Drop a job whose client went away: its undispatched rows never reach the device."""
        with self._cond:
            if job in self._pending:
                self._pending.remove(job)
                self._queued_tokens -= job.queued_tokens(self.workload)
            self._finish(job)

    def _finish(self, job: _Job) -> None:  # caller holds the lock
        if not job.done:
            job.done = True
            self._active_jobs -= 1
            if job.progress is not None:
                job.progress.rows_done += job.rows_done
                self._record_phases(job, job.progress)
            self._cond.notify_all()

    @staticmethod
    def _record_phases(job: _Job, progress: RequestProgress) -> None:
        """Queue wait (until its first row went out) and device time (until its last came back)."""
        now = time.time_ns()
        dispatched = job.dispatched_ns or now
        progress.phase("queue", job.enqueued_ns, dispatched)
        if job.dispatched_ns is not None:
            progress.phase("device", dispatched, now)

    # -- dispatcher ---------------------------------------------------------------------------

    def _take_rows(self) -> list[_Row]:
        """Rows for the next step (engine/scheduler.py), up to the step's token budget."""
        taken = take_step(
            self._pending,
            now=time.monotonic(),
            aging_seconds=self.aging_seconds,
            budget=self.step_tokens,
            cost=self.workload.cost,  # padded tokens it will occupy
            size=self.workload.size,
        )
        rows = [_Row(job, index) for job, index in taken]
        self._queued_tokens -= sum(self.workload.size(r.tokens) for r in rows)
        self._pending = [j for j in self._pending if j.next_row < len(j.token_lists)]
        return rows

    def _dispatch_loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    break
                rows = self._take_rows()
            try:
                plan = self.workload.plan([r.tokens for r in rows])
            except Exception:  # a bug here must not stop the dispatcher: fail this step's requests
                log.exception("planning %d rows failed; failing their requests", len(rows))
                for row in rows:
                    self._fail(row.job, EngineError("internal error while planning a batch"))
                continue
            # Batches in the scheduler's order: the one holding its first row (a query that
            # just got its turn) goes out first, not after the step's bulk.
            for planned in sorted(plan, key=lambda p: int(np.min(p.indices))):
                batch_rows = [rows[i] for i in planned.indices]
                if all(r.job.done for r in batch_rows):
                    continue  # every request in it timed out or went away: skip the device work
                shared = self._take_turn(planned.bucket)
                dispatched_ns = time.time_ns()
                for row in batch_rows:
                    if row.job.dispatched_ns is None:
                        row.job.dispatched_ns = dispatched_ns
                started = time.perf_counter()
                try:
                    result = self._run(batch_rows, planned)
                except Exception as e:  # surfaced per request by the collector
                    result = e
                self._inflight.put(_Dispatched(batch_rows, planned.bucket, result, started, shared))
        self._inflight.put(None)

    def _take_turn(self, bucket: Bucket) -> bool:
        """Wait for this batcher's fair turn on shared devices; True if one was taken."""
        if self._share is None:
            return False
        padded = bucket.batch * bucket.seq
        seconds = self.expected_seconds(padded)
        self._share.acquire(
            self.name, padded * DEFAULT_SECONDS_PER_TOKEN if seconds is None else seconds
        )
        return True

    def _run(self, rows: list[_Row], planned: PlannedBatch) -> DeviceResult:
        token_lists = [r.tokens for r in rows]
        if self._fault_hook is not None:
            self._fault_hook(token_lists)
        slots = np.array([r.job.adapter_slot for r in rows], dtype=np.int32)
        return self.workload.run(token_lists, planned, slots if slots.any() else None)

    # -- collector ----------------------------------------------------------------------------

    def _collect_loop(self) -> None:
        while (item := self._inflight.get()) is not None:
            try:
                self._collect(item)
            except Exception:  # a bug here must not stop the collector and hang every request
                log.exception("collecting batch %s failed; failing its requests", item.bucket)
                for row in item.rows:
                    self._fail(row.job, EngineError("internal error while collecting a batch"))
                self._give_back_turn(item)

    def _give_back_turn(self, item: _Dispatched) -> None:
        if item.shared:
            item.shared = False
            self._share.release(self.name)

    def _collect(self, item: _Dispatched) -> None:
        try:
            if isinstance(item.result, Exception):
                raise item.result
            vectors = item.result.read()  # waits for the device
        except Exception as e:
            self._give_back_turn(item)
            log.warning("batch %s failed (%s); retrying", item.bucket, e)
            self._retry(item.rows, e)
            return
        self._give_back_turn(item)
        self._deliver(item.rows, vectors)
        real_tokens = sum(self.workload.size(r.tokens) for r in item.rows)
        self.throughput.observe(real_tokens, item.started, time.perf_counter())
        if self._on_batch:
            self._on_batch(
                BatchStats(
                    bucket=item.bucket,
                    rows=len(item.rows),
                    requests=len({id(r.job) for r in item.rows}),
                    real_tokens=real_tokens,
                    seconds=time.perf_counter() - item.started,
                )
            )

    def _deliver(self, rows: list[_Row], vectors: np.ndarray) -> None:
        completed = []
        with self._cond:
            for row, vector in zip(rows, vectors, strict=False):
                job = row.job
                if job.done:
                    continue
                job.out[row.index] = vector
                job.remaining -= 1
                if job.remaining == 0:
                    self._finish(job)
                    completed.append(job)
        for job in completed:
            job.loop.call_soon_threadsafe(_resolve, job.future, job.out, None)

    def _retry(self, rows: list[_Row], error: Exception) -> None:
        """Recover from a failed batch without failing requests that did nothing wrong.

        Out of device memory: split the rows in halves and run each at a smaller
        bucket. Any other error: re-run request by request. A single request that
        still fails on its own gets the error (a 500 for that request only).
        """
        if isinstance(error, EngineUnavailableError):  # nothing to retry on: fail them all
            for job in {id(r.job): r.job for r in rows}.values():
                self._fail(job, error)
            return
        if is_out_of_memory(error) and len(rows) > 1:
            log.warning(
                "out of memory for %d rows; retrying in halves at smaller buckets", len(rows)
            )
            mid = len(rows) // 2
            self._run_now(rows[:mid])
            self._run_now(rows[mid:])
            return
        by_job: dict[int, list[_Row]] = {}
        for row in rows:
            by_job.setdefault(id(row.job), []).append(row)
        if len(by_job) == 1:
            log.error("request failed in the engine: %s", error)
            self._fail(rows[0].job, error)
            return
        for job_rows in by_job.values():
            self._run_now(job_rows)

    def _run_now(self, rows: list[_Row]) -> None:
        """Run rows synchronously in their own bucket batches, delivering or retrying each."""
        for planned in self.workload.plan([r.tokens for r in rows]):
            part = [rows[i] for i in planned.indices]
            try:
                vectors = self._run(part, planned).read()
            except Exception as e:
                self._retry(part, e)
                continue
            self._deliver(part, vectors)

    def _fail(self, job: _Job, error: Exception) -> None:
        with self._cond:
            if job.done:
                return
            if job in self._pending:
                self._pending.remove(job)
                self._queued_tokens -= job.queued_tokens(self.workload)
            self._finish(job)
        wrapped = (
            error
            if isinstance(error, EngineError | EngineUnavailableError)
            else EngineError(f"the engine failed: {type(error).__name__}")
        )
        job.loop.call_soon_threadsafe(_resolve, job.future, None, wrapped)


def is_out_of_memory(error: Exception) -> bool:
    """XLA reports device OOM as RESOURCE_EXHAUSTED (XlaRuntimeError) on every backend."""
    text = str(error)
    return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


def _resolve(future: asyncio.Future, value, error: BaseException | None) -> None:
    if future.done():  # the client went away
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)
