"""Which waiting rows form the next device step: priority, aging, and fair sharing.

Three rules, applied every step (docs/operations.md, "Scheduling"):

1. **Priority levels.** A job's level is its priority (lower = sooner) minus one step for
   every `aging_seconds` it has waited — but never below the best priority waiting, so aging
   lifts a starved job *into* the most urgent class and no further. Lower levels fill the
   step first; a level only gets the budget the levels before it left (work-conserving).
2. **Fair share within a level.** Jobs of one level take rows in turns, one row each per
   turn, the job that has had the fewest tokens so far first. A one-text query that arrives
   while a 2,000-text indexing job runs is in the very next step; the indexing job keeps
   every row the query does not use, so its throughput hardly changes.
3. **The step still fills.** Rows are taken until the step's token budget is spent, from
   every waiting job, so packing and bucket fill see as many rows as before.

Starvation-free both ways: a low-priority job ages into the top level and then shares it;
a large job in the top level gets a row in every step whatever stream of small jobs arrives.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Protocol

import numpy as np


class Schedulable(Protocol):
    priority: int
    enqueued: float
    seq: int
    served_tokens: int
    next_row: int  # rows before it have been taken
    sizes: np.ndarray  # real tokens per row (int64)
    costs: np.ndarray  # padded tokens each row occupies in a device batch (int64)


def level(job: Schedulable, now: float, aging_seconds: float, best: int) -> int:
    """Priority minus one step per `aging_seconds` waited, floored at the best priority waiting."""
    steps = math.floor((now - job.enqueued) / aging_seconds) if aging_seconds > 0 else 0
    return max(job.priority - steps, best)


def take_step(
    jobs: Sequence[Schedulable], *, now: float, aging_seconds: float, budget: int
) -> list[tuple[Schedulable, int, int]]:
    """(job, first row, end row) ranges for one step, advancing each job's `next_row` and
    `served_tokens`; a job's rows are taken in order, so each job gives one range.

    A row's `costs` entry is what it occupies in the step's budget (its padded length), its
    `sizes` entry what it counts for fairness (its real tokens). The first row is always
    taken, so a row larger than the whole budget still runs (alone).
    """
    if not jobs:
        return []
    best = min(j.priority for j in jobs)
    levels: dict[int, list[Schedulable]] = {}
    for job in jobs:
        levels.setdefault(level(job, now, aging_seconds, best), []).append(job)
    taken: dict[int, list] = {}  # id(job) -> [job, start, end]
    for lvl in sorted(levels):
        turn = sorted(levels[lvl], key=lambda j: (j.served_tokens, j.seq))
        if len(turn) == 1:
            budget -= _take_prefix(turn[0], budget, first=not taken, taken=taken)
        else:
            budget = _take_turns(turn, budget, taken)
        if budget <= 0:
            break
    out = []
    for job, start, end in taken.values():
        job.served_tokens += int(job.sizes[start:end].sum())
        out.append((job, start, end))
    return out


def _take_prefix(job: Schedulable, budget: int, *, first: bool, taken: dict) -> int:
    """The longest run of the job's next rows within `budget` (one row at least when the step
    is still empty), in one vectorised pass; returns the budget spent."""
    start = job.next_row
    window = job.costs[start : start + max(budget, 1)]
    spent = np.cumsum(window)
    count = int(np.searchsorted(spent, budget, side="right"))
    if count == 0 and first:
        count = 1
    if count == 0:
        return 0
    job.next_row = start + count
    taken[id(job)] = [job, start, start + count]
    return int(spent[count - 1])


def _take_turns(turn: list[Schedulable], budget: int, taken: dict) -> int:
    """Jobs of one level take one row each per turn, fewest tokens served first, until the
    budget is spent; a job whose next row does not fit stops (others' smaller rows still
    may). Returns the budget left."""
    while turn and budget > 0:
        next_turn = []
        for job in turn:
            row = job.next_row
            price = int(job.costs[row])
            if taken and price > budget:
                continue  # does not fit this step; others' smaller rows still may
            budget -= price
            entry = taken.get(id(job))
            if entry is None:
                taken[id(job)] = [job, row, row + 1]
            else:
                entry[2] = row + 1
            job.next_row = row + 1
            if job.next_row < len(job.costs):
                next_turn.append(job)
            if budget <= 0:
                break
        turn = next_turn
    return budget


@dataclasses.dataclass
class ThroughputEstimate:
    """Tokens per second of the device while it is busy, as a decaying average over batches.

    Each collected batch contributes its real tokens over the time it occupied the device:
    from when it was dispatched or the previous batch finished, whichever is later, to when
    its result was read — idle gaps between requests never count as work.
    """

    decay: float = 0.9
    min_batches: int = 8
    _tokens: float = 0.0
    _seconds: float = 0.0
    _batches: int = 0
    _last_done: float = 0.0

    def observe(self, tokens: int, dispatched: float, done: float) -> None:
        busy = done - max(dispatched, self._last_done)
        self._last_done = done
        if busy <= 0:
            return
        self._tokens = self.decay * self._tokens + tokens
        self._seconds = self.decay * self._seconds + busy
        self._batches += 1

    @property
    def tokens_per_second(self) -> float | None:
        """None until enough batches have been seen to trust the figure."""
        if self._batches < self.min_batches or self._seconds <= 0:
            return None
        return self._tokens / self._seconds
