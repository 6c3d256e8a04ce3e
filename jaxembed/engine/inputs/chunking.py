"""Inputs longer than the model: embed windows of the model's length and pool them.

An over-long input is cut into consecutive windows of its content tokens; each
window is a complete input of its own (the tokenizer's special tokens around
it, the EOS a last-token model needs), the card's prompt or instruction is
part of the text and so lands once, at the start of the first window. The
windows are embedded like any other inputs (they share batches, the cache and
packing) and the input's vector is the token-count-weighted mean of its
windows' vectors, renormalised when the model normalises. Token-id inputs are
used as given: their windows are plain slices of `max_length` ids.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from jaxembed.vectors import weighted_mean

# Default bound on one chunked input, in multiples of the model's maximum length.
MAX_EMBED_FACTOR = 16


@dataclasses.dataclass(frozen=True)
class ChunkPlan:
    """Every input's windows, flattened in input order, and how to put them back together."""

    windows: list[np.ndarray]  # token ids, each at most the model's maximum
    owners: np.ndarray  # [windows] index of the input each window belongs to
    inputs: int

    @classmethod
    def from_windows(cls, per_input: Sequence[Sequence[np.ndarray]]) -> ChunkPlan:
        windows = [w for ws in per_input for w in ws]
        owners = np.repeat(np.arange(len(per_input)), [len(ws) for ws in per_input])
        return cls(windows, owners, len(per_input))

    @property
    def token_counts(self) -> list[int]:
        """Tokens embedded per input (all of its windows, special tokens included)."""
        counts = np.zeros(self.inputs, dtype=np.int64)
        np.add.at(counts, self.owners, [len(w) for w in self.windows])
        return counts.tolist()

    def combine(self, vectors: np.ndarray, normalize: bool) -> np.ndarray:
        """[windows, D] → [inputs, D]; an input of one window keeps its vector exactly."""
        out = np.empty((self.inputs, vectors.shape[1]), dtype=np.float32)
        lengths = np.asarray([len(w) for w in self.windows], dtype=np.float64)
        for i in range(self.inputs):
            rows = np.flatnonzero(self.owners == i)
            if len(rows) == 1:
                out[i] = vectors[rows[0]]
            else:
                out[i] = weighted_mean(vectors[rows], lengths[rows], normalize)
        return out


def split_ids(ids: np.ndarray, width: int) -> list[np.ndarray]:
    """Consecutive slices of at most `width` ids."""
    return [ids[start : start + width] for start in range(0, len(ids), width)]
