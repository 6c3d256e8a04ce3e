"""The step scheduler alone: priority levels, aging into the top level, turns within a level."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from jaxembed.engine.batching.scheduler import ThroughputEstimate, take_step

ROW = np.ones(64, np.int32)  # every row costs 64 tokens
BUDGET = 640  # ten rows per step


@dataclasses.dataclass(eq=False)
class Job:
    rows: int
    priority: int = 0
    enqueued: float = 0.0
    seq: int = 0
    served_tokens: int = 0
    next_row: int = 0

    def __post_init__(self):
        self.sizes = np.full(self.rows, len(ROW), np.int64)
        self.costs = self.sizes

    @property
    def left(self) -> int:
        return self.rows - self.next_row


def step(jobs, now=0.0, aging=1.0):
    pending = [j for j in jobs if j.left]
    taken = take_step(pending, now=now, aging_seconds=aging, budget=BUDGET)
    return [job for job, start, end in taken for _ in range(start, end)]


def test_a_query_gets_a_row_in_the_next_step_behind_bulk_work():
    bulk = Job(2000, seq=0, enqueued=0.0)
    step([bulk], now=0.1)
    step([bulk], now=0.2)
    query = Job(1, seq=1, enqueued=0.25)  # same (default) priority, arrives later
    taken = step([bulk, query], now=0.3)
    assert taken.count(query) == 1 and taken.count(bulk) == 9  # the step stays full
    assert taken[0] is query  # the job with the fewest tokens served goes first


def test_jobs_of_one_level_take_turns():
    a, b, c = Job(100, seq=0), Job(100, seq=1), Job(3, seq=2)
    taken = step([a, b, c])
    assert len(taken) == 10
    assert taken.count(c) == 3 and abs(taken.count(a) - taken.count(b)) <= 1


def test_lower_priority_value_fills_the_step_first():
    urgent = [Job(5, priority=-5, seq=i) for i in range(3)]  # 15 rows
    relaxed = Job(5, priority=5, seq=9)
    taken = step([relaxed, *urgent])
    assert relaxed not in taken and len(taken) == 10
    # What the urgent jobs leave over goes to the next level (work-conserving).
    taken = step([relaxed, *urgent])
    assert taken.count(relaxed) == 5 and len(taken) == 10


def test_aging_lifts_a_waiting_job_into_the_top_level_and_no_further():
    stream = [Job(10, priority=-10, seq=i, enqueued=100.0) for i in range(5)]
    starved = Job(3, priority=10, seq=99, enqueued=0.0)
    # After 20 aging periods its level (10 - 20) is floored at the best priority waiting.
    taken = step([*stream, starved], now=100.0 + 0.5, aging=5.0)
    assert taken.count(starved) == 1  # one turn, as each of the five others had
    assert len(taken) == 10 and all(taken.count(j) >= 1 for j in stream)
    # Without aging it would wait behind the whole stream.
    starved_again = Job(3, priority=10, seq=99)
    assert starved_again not in step([*stream, starved_again], now=1e6, aging=math.inf)


def test_bulk_work_progresses_under_a_stream_of_small_jobs():
    bulk = Job(50, seq=0)
    seq = 1
    for t in range(200):  # a new small job every step, each waiting its turn
        smalls = [Job(1, seq=seq + i, enqueued=float(t)) for i in range(5)]
        seq += 5
        step([bulk, *smalls], now=float(t))
        if not bulk.left:
            break
    assert not bulk.left and t < 12  # 5 of 10 rows per step were free for it


def test_a_row_larger_than_the_budget_still_runs_alone():
    huge = Job(2, seq=0)
    huge.sizes = huge.costs = np.full(2, 4000, np.int64)
    small = Job(1, seq=1)
    taken = step([huge, small])
    assert len(taken) == 1


def test_throughput_estimate_counts_busy_time_only():
    estimate = ThroughputEstimate(min_batches=2)
    assert estimate.tokens_per_second is None
    estimate.observe(1000, dispatched=0.0, done=1.0)
    estimate.observe(1000, dispatched=0.5, done=2.0)  # queued behind the first: 1 s busy
    estimate.observe(1000, dispatched=10.0, done=11.0)  # after an idle gap: 1 s busy
    assert abs(estimate.tokens_per_second - 1000) < 1e-6
