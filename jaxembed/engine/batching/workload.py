"""The interface between the Batcher and what it batches (text rows, image rows, items)."""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxembed.engine.batching.buckets import PlannedBatch


@dataclasses.dataclass(frozen=True)
class DeviceResult:
    """A dispatched batch: the device array and where each input's vector is in it."""

    array: Any  # jax.Array: [B, D], or [B, K, D] for packed rows
    count: int  # inputs in the batch
    rows: np.ndarray | None = None  # packed: row and 1-based segment per input
    segments: np.ndarray | None = None

    def read(self) -> np.ndarray:
        """[count, D] float32 in the batch's input order; waits for the device."""
        out = np.asarray(self.array)
        if self.rows is None:
            return out[: self.count]
        return out[self.rows, self.segments - 1]


class Workload(abc.ABC):
    """What a Batcher batches: how rows cost, plan into device batches, and run.

    A row is one array (token ids of a text, pixels of an image, a prepared item); the
    Batcher does the queueing, priorities, pipelining and retries the same for all. Sizes
    and costs are computed once per request, over all its rows at once.
    """

    dimensions: int
    step_budget: int  # padded tokens one device batch may hold

    @abc.abstractmethod
    def sizes(self, rows: Sequence[Any]) -> np.ndarray:
        """Real tokens of each row (int64; queue limits, fairness and fill metrics)."""

    @abc.abstractmethod
    def costs(self, sizes: np.ndarray) -> np.ndarray:
        """Padded tokens each row of these sizes will occupy in a device batch (int64)."""

    @abc.abstractmethod
    def plan(self, rows: Sequence[Any], sizes: np.ndarray) -> list[PlannedBatch]:
        """Split rows (of `sizes`) into device batches, each a bucket of the compiled grid."""

    @abc.abstractmethod
    def run(
        self, rows: Sequence[Any], planned: PlannedBatch, slots: np.ndarray | None
    ) -> DeviceResult:
        """Dispatch one planned batch without waiting (`rows` in `planned.indices` order);
        `slots`: a LoRA slot per input (in `rows` order), or None for the base model."""

    @abc.abstractmethod
    def warmup(self, progress=None) -> float:
        """Compile every program this workload can run; seconds taken."""
