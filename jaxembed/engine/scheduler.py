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
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np


class Schedulable(Protocol):
    priority: int
    enqueued: float
    seq: int
    served_tokens: int
    next_row: int
    token_lists: list[np.ndarray]


def level(job: Schedulable, now: float, aging_seconds: float, best: int) -> int:
    """Priority minus one step per `aging_seconds` waited, floored at the best priority waiting."""
    steps = math.floor((now - job.enqueued) / aging_seconds) if aging_seconds > 0 else 0
    return max(job.priority - steps, best)


def take_step(
    jobs: Sequence[Schedulable],
    *,
    now: float,
    aging_seconds: float,
    budget: int,
    cost: Callable[[np.ndarray], int],
    size: Callable[[np.ndarray], int],
) -> list[tuple[Schedulable, int]]:
    """(job, row index) pairs for one step, advancing each job's `next_row` and `served_tokens`.

    `cost(row)` is what a row occupies in the step's budget (its padded length), `size(row)`
    what it counts for fairness (its real tokens). The first row is always taken, so a row
    larger than the whole budget still runs (alone).
    """
    if not jobs:
        return []
    best = min(j.priority for j in jobs)
    levels: dict[int, list[Schedulable]] = {}
    for job in jobs:
        levels.setdefault(level(job, now, aging_seconds, best), []).append(job)
    taken: list[tuple[Schedulable, int]] = []
    for lvl in sorted(levels):
        turn = sorted(levels[lvl], key=lambda j: (j.served_tokens, j.seq))
        while turn and budget > 0:
            next_turn = []
            for job in turn:
                row = job.token_lists[job.next_row]
                price = cost(row)
                if taken and price > budget:
                    continue  # does not fit this step; others' smaller rows still may
                budget -= price
                job.served_tokens += size(row)
                taken.append((job, job.next_row))
                job.next_row += 1
                if job.next_row < len(job.token_lists):
                    next_turn.append(job)
                if budget <= 0:
                    break
            turn = next_turn
        if budget <= 0:
            break
    return taken


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
