"""Dynamic batching: concurrent requests → token-budget bucket batches → results per request.

Two threads do the device work so the event loop never blocks on it:
the *dispatcher* picks rows from pending requests (priority with aging, and
turns between requests of one level: engine/batching/scheduler.py), plans them
into bucket batches and dispatches them (JAX returns at once); the *collector*
waits for each batch's result, writes rows back into their request's output and
resolves the finished requests on their event loop — one hand-over per batch,
not per request. While the device works on step n, new requests queue up and
form step n+1: batching without any fixed wait, so a lone request when idle goes
out at once.

Host work is per batch over arrays: a request's row sizes and costs are computed
once when it arrives, a step takes contiguous row ranges per request, a batch's
rows are grouped back to their requests with one sort.

A batch whose computation fails is retried: split in halves at smaller buckets
when the device ran out of memory, request by request otherwise, so a request
that breaks the engine fails alone and the others in its batch still succeed.
Retries go back to the dispatcher, which runs them before new work and in the
device's fair turn like any batch.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from jaxembed.aio import resolve_on_loops
from jaxembed.engine.batching.buckets import Bucket, PlannedBatch
from jaxembed.engine.batching.device_share import DEFAULT_SECONDS_PER_TOKEN, DeviceShare
from jaxembed.engine.batching.scheduler import ThroughputEstimate, take_step
from jaxembed.engine.batching.workload import DeviceResult, Workload
from jaxembed.engine.request.limits import QueueLimits
from jaxembed.engine.request.progress import RequestProgress
from jaxembed.errors import (
    DeviceMemoryError,
    EngineError,
    EngineUnavailableError,
    OverloadedError,
)

log = logging.getLogger(__name__)

FaultHook = Callable[[Sequence[np.ndarray]], None]


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
    rows: Sequence[Any]
    sizes: np.ndarray  # real tokens per row
    costs: np.ndarray  # padded tokens per row
    priority: int
    seq: int
    enqueued: float
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    out: np.ndarray
    adapter_slot: int = 0  # LoRA slot of every row (0 = base model)
    next_row: int = 0  # rows before this one have been taken by a step
    remaining: int = 0  # rows not yet written to `out`
    queued_tokens: int = 0  # real tokens of the rows not yet taken
    queued_cost: int = 0  # padded tokens of the rows not yet taken
    served_tokens: int = 0  # tokens taken so far (fair share within a priority level)
    done: bool = False
    progress: RequestProgress | None = None
    enqueued_ns: int = 0  # time.time_ns() when queued, and when its first row was dispatched
    dispatched_ns: int | None = None

    @property
    def rows_done(self) -> int:
        return len(self.rows) - self.remaining


@dataclasses.dataclass
class _Selection:
    """Rows of several jobs, as parallel arrays: row i is row `row_index[i]` of
    `jobs[job_number[i]]`."""

    jobs: list[_Job]
    job_number: np.ndarray
    row_index: np.ndarray

    @classmethod
    def of_ranges(cls, ranges: Sequence[tuple[_Job, int, int]]) -> _Selection:
        jobs = [job for job, _, _ in ranges]
        counts = np.fromiter((end - start for _, start, end in ranges), np.int64, len(ranges))
        starts = np.fromiter((start for _, start, _ in ranges), np.int64, len(ranges))
        offsets = np.cumsum(counts) - counts
        within = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(offsets, counts)
        return cls(
            jobs, np.repeat(np.arange(len(jobs)), counts), np.repeat(starts, counts) + within
        )

    def __len__(self) -> int:
        return len(self.row_index)

    def subset(self, positions: np.ndarray) -> _Selection:
        return _Selection(self.jobs, self.job_number[positions], self.row_index[positions])

    def _pairs(self) -> zip:
        return zip(self.job_number.tolist(), self.row_index.tolist(), strict=True)

    def rows(self) -> list[Any]:
        jobs = self.jobs
        return [jobs[j].rows[r] for j, r in self._pairs()]

    def sizes(self) -> np.ndarray:
        jobs = self.jobs
        return np.fromiter((jobs[j].sizes[r] for j, r in self._pairs()), np.int64, len(self))

    def by_job(self) -> list[tuple[_Job, np.ndarray]]:
        """(job, positions of its rows here) for every job with rows here, one sort."""
        order = np.argsort(self.job_number, kind="stable")
        cuts = np.flatnonzero(np.diff(self.job_number[order])) + 1
        return [(self.jobs[int(self.job_number[p[0]])], p) for p in np.split(order, cuts) if len(p)]

    def all_done(self) -> bool:
        return all(self.jobs[j].done for j in np.unique(self.job_number).tolist())

    def slots(self) -> np.ndarray | None:
        slots = np.fromiter((j.adapter_slot for j in self.jobs), np.int32, len(self.jobs))
        return slots[self.job_number] if slots.any() else None


@dataclasses.dataclass
class _Dispatched:
    selection: _Selection
    bucket: Bucket
    result: object  # DeviceResult, or the exception raised at dispatch
    started: float
    shared: bool = False  # holds a turn of the DeviceShare until collected


class Batcher:
    """Async front of a `Workload`: `await batcher.embed(rows, priority)` → [N, D] float32."""

    def __init__(
        self,
        workload: Workload,
        *,
        limits: QueueLimits | None = None,
        pipeline_depth: int = 2,
        on_batch: Callable[[BatchStats], None] | None = None,
        fault_hook: FaultHook | None = None,
        share: DeviceShare | None = None,
        name: str = "default",
    ):
        """`share`: devices shared with other batchers (other models, images): each batch
        waits for a fair turn (engine/batching/device_share.py); `name` identifies this
        batcher there."""
        self.workload = workload
        self.limits = limits = limits or QueueLimits()
        self.step_tokens = workload.step_budget * limits.step_batches
        self._on_batch = on_batch
        self._fault_hook = fault_hook
        self._share = share
        self.name = name
        self._cond = threading.Condition()
        self._pending: list[_Job] = []  # jobs with rows not yet taken
        self._retries: collections.deque[_Selection] = collections.deque()
        self._queued_tokens = 0
        self._queued_cost = 0  # padded tokens waiting: is there a full batch?
        self._on_device = 0  # batches dispatched and not yet collected
        self._seq = itertools.count()
        self._inflight: queue.Queue[_Dispatched | None] = queue.Queue(maxsize=pipeline_depth)
        self._pipeline_depth = pipeline_depth
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
        waiting = len(self._pending)
        if waiting >= self.limits.max_queued_requests:
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
        rows: Sequence[Any],
        priority: int = 0,
        adapter_slot: int = 0,
        progress: RequestProgress | None = None,
        sizes: np.ndarray | None = None,
    ) -> np.ndarray:
        """Embeddings of validated rows, [N, D] float32 in order. Lower priority = sooner.

        `adapter_slot`: a pinned LoRA slot; rows of different adapters are batched
        together. `progress` counts the rows finished, also when the caller gives up (a
        timeout cancels the call: untaken rows are dropped). `sizes`: the rows' real
        tokens, when the caller has them already.
        """
        loop = asyncio.get_running_loop()
        sizes = self.workload.sizes(rows) if sizes is None else np.asarray(sizes, np.int64)
        tokens = int(sizes.sum())
        costs = self.workload.costs(sizes)
        job = _Job(
            rows=rows,
            sizes=sizes,
            costs=costs,
            priority=priority,
            seq=next(self._seq),
            enqueued=time.monotonic(),
            loop=loop,
            future=loop.create_future(),
            out=np.empty((len(rows), self.workload.dimensions), dtype=np.float32),
            remaining=len(rows),
            queued_tokens=tokens,
            queued_cost=int(costs.sum()),
            adapter_slot=adapter_slot,
            progress=progress,
            enqueued_ns=time.time_ns(),
        )
        with self._cond:
            self._admit(tokens)
            self._pending.append(job)
            self._queued_tokens += tokens
            self._queued_cost += job.queued_cost
            self._active_jobs += 1
            self._cond.notify_all()
        try:
            return await job.future
        except asyncio.CancelledError:
            self._cancel(job)
            raise

    def _admit(self, tokens: int) -> None:  # caller holds the lock
        if not self._accepting:
            raise OverloadedError("the server is shutting down", retry_after=5.0)
        if self._pending and (
            len(self._pending) >= self.limits.max_queued_requests
            or self._queued_tokens + tokens > self.limits.max_queued_tokens
        ):
            raise OverloadedError(
                f"the queue is full ({len(self._pending)} requests, {self._queued_tokens} "
                "tokens waiting)",
                retry_after=1.0,
            )

    def _cancel(self, job: _Job) -> None:
        """Drop a job whose client went away: its untaken rows never reach the device."""
        with self._cond:
            self._unqueue(job)
            self._finish(job)

    def _unqueue(self, job: _Job) -> None:  # caller holds the lock
        if job in self._pending:
            self._pending.remove(job)
            self._queued_tokens -= job.queued_tokens
            self._queued_cost -= job.queued_cost
            job.queued_tokens = job.queued_cost = 0

    def _finish(self, job: _Job) -> None:  # caller holds the lock
        if not job.done:
            job.done = True
            self._active_jobs -= 1
            if job.progress is not None:
                job.progress.add_rows(job.rows_done)
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

    def _take_step(self) -> _Selection:  # caller holds the lock
        """Rows for the next step (engine/batching/scheduler.py), up to the step's budget."""
        ranges = take_step(
            self._pending,
            now=time.monotonic(),
            aging_seconds=self.limits.aging_seconds,
            budget=self.step_tokens,
        )
        for job, start, end in ranges:
            taken = int(job.sizes[start:end].sum())
            job.queued_tokens -= taken
            self._queued_tokens -= taken
            cost = int(job.costs[start:end].sum())
            job.queued_cost -= cost
            self._queued_cost -= cost
        self._pending = [j for j in self._pending if j.next_row < len(j.rows)]
        return _Selection.of_ranges(ranges)

    def _next_work(self) -> _Selection | None:
        """A retry if one waits (it goes first), else the next step; None when stopping."""
        with self._cond:
            while not self._retries and not self._step_due() and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return None
            if self._retries:
                return self._retries.popleft()
            return self._take_step()

    def _step_due(self) -> bool:  # caller holds the lock
        """Continuous batching: a step goes out when the device is idle, or when a full batch is
        already waiting and the pipeline has room for it; while the device works, smaller
        arrivals gather into the next step (a batch that went out with a few rows would cost
        a whole batch's overhead).

        With the pipeline full (`pipeline_depth` batches waiting behind the one being read)
        a step taken now could only wait to be dispatched, and the rows arriving meanwhile
        would miss it: under many single-text clients that made steps of a few rows, each
        planned into a full batch or two and a partly empty one (in-process MiniLM, 32
        clients: 0.89 fill and 16% more batches than 16-text requests for the same texts).
        """
        if not self._pending:
            return False
        if self._on_device == 0:
            return True
        room = self._on_device <= self._pipeline_depth
        return room and self._queued_cost >= self.workload.step_budget

    def _dispatch_loop(self) -> None:
        while (selection := self._next_work()) is not None:
            rows = selection.rows()
            try:
                plan = self.workload.plan(rows, selection.sizes())
            except Exception:  # a bug here must not stop the dispatcher: fail this step's jobs
                log.exception("planning %d rows failed; failing their requests", len(rows))
                self._fail_all(selection, EngineError("internal error while planning a batch"))
                continue
            # Batches in the scheduler's order: the one holding its first row (a query that
            # just got its turn) goes out first, not after the step's bulk.
            for planned in sorted(plan, key=lambda p: int(np.min(p.indices))):
                self._dispatch(selection.subset(planned.indices), rows, planned)
        self._inflight.put(None)

    def _dispatch(self, batch: _Selection, step_rows: list, planned: PlannedBatch) -> None:
        if batch.all_done():
            return  # every request in it timed out or went away: skip the device work
        shared = self._take_turn(planned.bucket)
        dispatched_ns = time.time_ns()
        for job in batch.jobs:
            if job.dispatched_ns is None:
                job.dispatched_ns = dispatched_ns
        started = time.perf_counter()
        try:
            result = self._run([step_rows[i] for i in planned.indices.tolist()], planned, batch)
        except Exception as e:  # surfaced per request by the collector
            result = e
        with self._cond:
            self._on_device += 1
        self._inflight.put(_Dispatched(batch, planned.bucket, result, started, shared))

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

    def _run(self, rows: list, planned: PlannedBatch, batch: _Selection) -> DeviceResult:
        if self._fault_hook is not None:
            self._fault_hook(rows)
        return self.workload.run(rows, planned, batch.slots())

    # -- collector ----------------------------------------------------------------------------

    def _collect_loop(self) -> None:
        while (item := self._inflight.get()) is not None:
            try:
                self._collect(item)
            except Exception:  # a bug here must not stop the collector and hang every request
                log.exception("collecting batch %s failed; failing its requests", item.bucket)
                self._fail_all(
                    item.selection, EngineError("internal error while collecting a batch")
                )
                self._give_back_turn(item)
            finally:
                with self._cond:
                    self._on_device -= 1
                    self._cond.notify_all()

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
            self._retry(item.selection, e)
            return
        self._give_back_turn(item)
        self._deliver(item.selection, vectors)
        real_tokens = int(item.selection.sizes().sum())
        done = time.perf_counter()
        self.throughput.observe(real_tokens, item.started, done)
        if self._on_batch:
            self._on_batch(
                BatchStats(
                    bucket=item.bucket,
                    rows=len(item.selection),
                    requests=len(np.unique(item.selection.job_number)),
                    real_tokens=real_tokens,
                    seconds=done - item.started,
                )
            )

    def _deliver(self, batch: _Selection, vectors: np.ndarray) -> None:
        completed = []
        with self._cond:
            for job, positions in batch.by_job():
                if job.done:
                    continue
                job.out[batch.row_index[positions]] = vectors[positions]
                job.remaining -= len(positions)
                if job.remaining == 0:
                    self._finish(job)
                    completed.append((job.loop, job.future, job.out, None))
        resolve_on_loops(completed)

    def _retry(self, batch: _Selection, error: Exception) -> None:
        """Recover from a failed batch without failing requests that did nothing wrong.

        Out of device memory: split the rows in halves, each planned again (smaller
        buckets). Any other error: re-run request by request. A single request that still
        fails on its own gets the error (a 500 for that request only). Retries queue for
        the dispatcher, ahead of new work.
        """
        if isinstance(error, EngineUnavailableError):  # nothing to retry on: fail them all
            self._fail_all(batch, error)
            return
        if is_out_of_memory(error) and len(batch) > 1:
            log.warning(
                "out of memory for %d rows; retrying in halves at smaller buckets", len(batch)
            )
            mid = len(batch) // 2
            parts = [batch.subset(np.arange(mid)), batch.subset(np.arange(mid, len(batch)))]
        else:
            groups = batch.by_job()
            if len(groups) == 1:
                log.error("request failed in the engine: %s", error)
                self._fail(groups[0][0], error)
                return
            parts = [batch.subset(positions) for _, positions in groups]
        with self._cond:
            self._retries.extend(parts)
            self._cond.notify_all()

    def _fail_all(self, batch: _Selection, error: Exception) -> None:
        for job, _ in batch.by_job():
            self._fail(job, error)

    def _fail(self, job: _Job, error: Exception) -> None:
        with self._cond:
            if job.done:
                return
            self._unqueue(job)
            self._finish(job)
        wrapped = (
            error
            if isinstance(error, EngineError | EngineUnavailableError)
            else EngineError(f"the engine failed: {type(error).__name__}")
        )
        resolve_on_loops([(job.loop, job.future, None, wrapped)])


def is_out_of_memory(error: Exception) -> bool:
    """XLA reports device OOM as RESOURCE_EXHAUSTED (XlaRuntimeError) on every backend; the
    runner's own memory check as DeviceMemoryError."""
    if isinstance(error, DeviceMemoryError):
        return True
    text = str(error)
    return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()
