"""The async Batcher with the real MiniLM engine: merging, order, priority, cancellation, overload, faults."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from jaxembed.engine.batching.batcher import Batcher
from jaxembed.engine.model import TextWorkload
from jaxembed.engine.request.limits import QueueLimits
from jaxembed.errors import EngineError, OverloadedError

POISON = 29999  # a token id the fault hook treats as a device failure


def _poison_hook(token_lists):
    if any(POISON in t for t in token_lists):
        raise RuntimeError("injected device failure")


@pytest.fixture
def make_batcher(embedder):
    started = []

    def make(**kwargs):
        limits = {
            k: kwargs.pop(k)
            for k in ("step_batches", "aging_seconds", "max_queued_requests")
            if k in kwargs
        }
        batcher = Batcher(TextWorkload(embedder), limits=QueueLimits(**limits), **kwargs)
        batcher.start(warmup=False)
        started.append(batcher)
        return batcher

    yield make
    for b in started:
        b.close(timeout=10)


def test_concurrent_requests_merge_and_match_single_results(embedder, corpus, make_batcher):
    stats = []
    batcher = make_batcher(on_batch=stats.append)
    texts = corpus[:48]
    token_lists = embedder.tokenize(texts, truncate=True)
    expected = embedder.embed_token_lists(token_lists)

    async def main():
        return await asyncio.gather(*(batcher.embed([t]) for t in token_lists))

    results = asyncio.run(main())
    got = np.concatenate(results)
    assert np.abs(got - expected).max() <= 1e-6
    assert max(s.requests for s in stats) > 1  # some batches held several requests
    assert all(0 < s.fill_ratio <= 1 for s in stats)


def test_large_request_is_split_and_reassembled_in_order(embedder, corpus, make_batcher):
    batcher = make_batcher()
    token_lists = embedder.tokenize(corpus, truncate=True)
    got = asyncio.run(batcher.embed(token_lists))
    assert np.abs(got - embedder.embed_token_lists(token_lists)).max() <= 1e-6


def test_lower_priority_value_runs_first(embedder, make_batcher):
    import threading

    gate = threading.Event()
    GATE = 29998

    def hold_until_queued(token_lists):  # keeps the dispatcher busy while the others queue up
        if any(GATE in t for t in token_lists):
            gate.wait(timeout=30)

    order = []
    batcher = make_batcher(step_batches=1, aging_seconds=1e6, fault_hook=hold_until_queued)
    blocker = [np.array([101, GATE, 102], np.int32)]
    tokens = embedder.tokenize(["x " * 200], truncate=True)  # one row per step

    async def main():
        async def tagged(tag, prio):
            await batcher.embed(tokens, priority=prio)
            order.append(tag)

        async def until(condition):
            for _ in range(1000):
                if condition():
                    return
                await asyncio.sleep(0.01)
            raise AssertionError("timed out")

        first = asyncio.create_task(batcher.embed(blocker))
        await until(lambda: batcher.active_requests == 1 and batcher.queued_requests == 0)
        tasks = [asyncio.create_task(tagged(f"low{i}", 10)) for i in range(3)]
        tasks.append(asyncio.create_task(tagged("high", -5)))
        await until(lambda: batcher.queued_requests == 4)
        gate.set()
        await asyncio.gather(first, *tasks)

    asyncio.run(main())
    assert order[0] == "high", order


def _finishing_order(embedder, batcher, urgent: int) -> list[str]:
    """`urgent` priority -10 requests of one step each, then one priority 10 request, all
    queued at once; the order in which they finish."""
    step_rows = embedder.tokenize(["busy " * 120] * 4, truncate=True)  # 4 x 122 tokens
    order = []

    async def tagged(tag, rows, priority):
        await batcher.embed(rows, priority=priority)
        order.append(tag)

    async def main():
        tasks = [asyncio.create_task(tagged(f"u{i}", step_rows, -10)) for i in range(urgent)]
        tasks.append(asyncio.create_task(tagged("low", step_rows[:1], 10)))
        await asyncio.gather(*tasks)

    asyncio.run(main())
    return order


def test_aging_prevents_starvation(embedder, make_batcher):
    """Behind a queue of urgent requests, a low-priority one ages into their level within a
    few steps and then takes turns with them; without aging it runs last."""
    aged = _finishing_order(embedder, make_batcher(aging_seconds=0.005, step_batches=1), 60)
    assert aged.index("low") < 30, aged
    unaged = _finishing_order(embedder, make_batcher(aging_seconds=1e9, step_batches=1), 60)
    assert unaged[-1] == "low", unaged


def test_a_small_request_overtakes_bulk_work_of_the_same_priority(embedder, corpus, make_batcher):
    """Fair share: a one-text request sent while a large one runs finishes long before it."""
    batcher = make_batcher()
    bulk_rows = embedder.tokenize(corpus * 3, truncate=True)
    query = embedder.tokenize(["where is the cat?"])
    finished = {}

    async def main():
        start = time.perf_counter()
        bulk = asyncio.create_task(batcher.embed(bulk_rows))
        await asyncio.sleep(0.5)
        sent = time.perf_counter()
        got = await batcher.embed(query)
        finished["query"] = time.perf_counter() - sent
        result = await bulk
        finished["bulk"] = time.perf_counter() - start
        return got, result

    got, result = asyncio.run(main())
    assert finished["query"] < finished["bulk"] / 4, finished
    np.testing.assert_allclose(got, embedder.embed_token_lists(query), atol=1e-6)
    np.testing.assert_allclose(result, embedder.embed_token_lists(bulk_rows), atol=1e-6)


def test_overload_is_refused_fast_and_accepted_work_completes(embedder, make_batcher):
    batcher = make_batcher(max_queued_requests=2)
    tokens = embedder.tokenize(["burst " * 100], truncate=True)

    async def main():
        tasks = [asyncio.create_task(batcher.embed(tokens * 8)) for _ in range(30)]
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = asyncio.run(main())
    refused = [r for r in results if isinstance(r, OverloadedError)]
    done = [r for r in results if isinstance(r, np.ndarray)]
    assert refused and done and len(refused) + len(done) == 30
    assert all(r.retry_after > 0 for r in refused)


def test_cancelled_request_frees_its_queue_slot(embedder, make_batcher):
    batcher = make_batcher()
    tokens = embedder.tokenize(["cancel me " * 20] * 300, truncate=True)

    async def main():
        task = asyncio.create_task(batcher.embed(tokens))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert batcher.queued_requests == 0 and batcher.active_requests == 0
        return await batcher.embed(embedder.tokenize(["still serving"]))

    assert asyncio.run(main()).shape == (1, 384)


def test_engine_failure_fails_only_the_poisoned_request(embedder, make_batcher):
    batcher = make_batcher(fault_hook=_poison_hook)
    good = embedder.tokenize(["good one", "another good one", "third"])
    bad = [np.array([101, POISON, 102], np.int32)]

    async def main():
        return await asyncio.gather(
            *(batcher.embed([g]) for g in good), batcher.embed(bad), return_exceptions=True
        )

    *oks, failed = asyncio.run(main())
    assert isinstance(failed, EngineError)
    expected = embedder.embed_token_lists(good)
    assert np.abs(np.concatenate(oks) - expected).max() <= 1e-6
    assert asyncio.run(batcher.embed(good)).shape == (3, 384)  # and it keeps serving


def test_close_drains_and_then_refuses(embedder):
    batcher = Batcher(TextWorkload(embedder))
    batcher.start(warmup=False)
    tokens = embedder.tokenize(["drain"])
    assert asyncio.run(batcher.embed(tokens)).shape == (1, 384)
    assert batcher.close(timeout=5)

    with pytest.raises(OverloadedError, match="shutting down"):
        asyncio.run(batcher.embed(tokens))


def test_out_of_memory_splits_the_batch_and_retries_smaller(embedder, corpus, make_batcher):
    stats, seen = [], []

    def oom_above_two_rows(token_lists):
        seen.append(len(token_lists))
        if len(token_lists) > 2:
            raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1.0GiB")

    batcher = make_batcher(fault_hook=oom_above_two_rows, on_batch=stats.append)
    texts = [t for t in corpus if len(t) < 300][:16]
    token_lists = embedder.tokenize(texts, truncate=True)
    got = asyncio.run(batcher.embed(token_lists))
    assert np.abs(got - embedder.embed_token_lists(token_lists)).max() <= 1e-6
    assert max(seen) > 2 and min(seen) <= 2  # a large batch failed, smaller ones succeeded


def test_out_of_memory_for_a_single_row_fails_that_request_only(embedder, make_batcher):
    def oom_for_long_rows(token_lists):
        if any(len(t) > 100 for t in token_lists):
            raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory")

    batcher = make_batcher(fault_hook=oom_for_long_rows)
    long_one = embedder.tokenize(["word " * 200], truncate=True)
    short = embedder.tokenize(["short and fine"])

    async def main():
        return await asyncio.gather(
            batcher.embed(long_one), batcher.embed(short), return_exceptions=True
        )

    failed, ok = asyncio.run(main())
    assert isinstance(failed, EngineError) and isinstance(ok, np.ndarray)


def test_rows_arriving_while_the_pipeline_is_full_gather_into_one_step(embedder):
    """With `pipeline_depth` batches waiting behind the one on the device, no step is taken:
    single texts that arrive meanwhile go out together once there is room (a step taken at
    once could only have waited, with fewer rows to pack)."""
    import threading

    gate = threading.Event()
    steps = []

    class Held(TextWorkload):  # every result's read waits for the gate; steps are recorded
        def plan(self, rows, sizes):
            steps.append(len(rows))
            return super().plan(rows, sizes)

        def run(self, rows, planned, slots):
            result = super().run(rows, planned, slots)

            class Waiting:
                def read(self):
                    gate.wait(timeout=60)
                    return result.read()

            return Waiting()

    batcher = Batcher(Held(embedder), pipeline_depth=2)
    batcher.start(warmup=False)
    rng = np.random.default_rng(3)
    long_rows = [rng.integers(1000, 2000, 250).astype(np.int32) for _ in range(6)]  # 3 batches
    singles = [rng.integers(1000, 2000, 60).astype(np.int32) for _ in range(20)]
    expected = embedder.embed_token_lists(long_rows + singles)

    async def main():
        bulk = asyncio.ensure_future(batcher.embed(long_rows))
        while batcher._on_device < 3:  # one read waiting at the gate, two queued behind it
            await asyncio.sleep(0.01)
        queued = []
        for row in singles:  # more than a batch's budget (512 tokens) arrives meanwhile
            queued.append(asyncio.ensure_future(batcher.embed([row])))
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.2)
        assert steps == [6]  # nothing taken while the pipeline is full
        gate.set()
        return await bulk, await asyncio.gather(*queued)

    try:
        bulk, single = asyncio.run(main())
    finally:
        gate.set()
        batcher.close(timeout=10)
    assert steps == [6, 20]
    got = np.concatenate([bulk, *single])
    assert np.abs(got - expected).max() <= 1e-6
