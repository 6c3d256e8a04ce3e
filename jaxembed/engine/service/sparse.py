"""Sparse vectors from a SPLADE model's vocabulary weights: the non-zeros, optionally pruned.

The engine computes a SPLADE vector dense ([vocab] float32, most entries exactly 0 after
the ReLU); this is where it becomes what clients store: indices (vocabulary ids, ascending)
and their weights. Pruning keeps the `top_k` largest weights and/or those above
`threshold`, as sparse indexes usually want.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxembed.errors import InvalidInputError


@dataclasses.dataclass(frozen=True)
class SparseOptions:
    top_k: int | None = None  # keep only the k largest weights
    threshold: float = 0.0  # keep only weights above this

    def __post_init__(self) -> None:
        if self.top_k is not None and (isinstance(self.top_k, bool) or self.top_k < 1):
            raise InvalidInputError("sparse_top_k must be a positive integer", param="sparse_top_k")
        if not np.isfinite(self.threshold) or self.threshold < 0:
            raise InvalidInputError(
                "sparse_threshold must be a finite number ≥ 0", param="sparse_threshold"
            )


@dataclasses.dataclass(frozen=True)
class SparseVector:
    indices: np.ndarray  # int64, ascending
    values: np.ndarray  # float32, > threshold


def to_sparse(vectors: np.ndarray, options: SparseOptions = SparseOptions()) -> list[SparseVector]:
    """[N, vocab] weights → one SparseVector per row (ties at the top-k cut keep lower ids)."""
    out = []
    for row in np.asarray(vectors, dtype=np.float32):
        keep = np.flatnonzero(row > options.threshold)
        if options.top_k is not None and len(keep) > options.top_k:
            order = np.argsort(-row[keep], kind="stable")[: options.top_k]
            keep = np.sort(keep[order])
        out.append(SparseVector(keep.astype(np.int64), row[keep]))
    return out
