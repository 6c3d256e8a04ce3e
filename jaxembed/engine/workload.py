"""The interface between the Batcher and what it batches (text rows, image rows)."""

from __future__ import annotations

import abc
from collections.abc import Sequence

import numpy as np

from jaxembed.engine.buckets import Bucket, PlannedBatch


class Workload(abc.ABC):
    """What a Batcher batches: how rows cost, plan into device batches, and run.

    A row is one array (token ids of a text, pixels of an image); the Batcher
    does the queueing, priorities, pipelining and retries the same for all.
    """

    dimensions: int
    step_budget: int  # padded tokens one device batch may hold

    @abc.abstractmethod
    def size(self, row: np.ndarray) -> int:
        """Real tokens of a row (for queue limits and fill metrics)."""

    @abc.abstractmethod
    def cost(self, row: np.ndarray) -> int:
        """Padded tokens the row will occupy in a device batch."""

    @abc.abstractmethod
    def plan(self, rows: Sequence[np.ndarray]) -> list[PlannedBatch]:
        """Split rows into device batches (each a bucket of the compiled grid)."""

    @abc.abstractmethod
    def run(self, rows: Sequence[np.ndarray], bucket: Bucket, slots: np.ndarray | None):
        """Dispatch one batch without waiting; `slots`: a LoRA slot per padded row, or None."""

    @abc.abstractmethod
    def warmup(self, progress=None) -> float:
        """Compile every program this workload can run; seconds taken."""
