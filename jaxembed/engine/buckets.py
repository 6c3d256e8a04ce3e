"""The (batch, sequence-length) bucket grid, and planning of inputs into padded bucket batches.

XLA compiles one program per input shape. A fixed grid bounds the number of
programs (all compiled at warm-up), and a token budget bounds how much work
one batch holds: on a 2-core CPU small batches are fastest, an accelerator
wants large ones, so the budget is a per-backend setting.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Sequence

import numpy as np

# Measured on the 2-vCPU development machine (docs/benchmarks.md); accelerators want far more.
DEFAULT_TOKEN_BUDGET = {"cpu": 512, "gpu": 16384, "tpu": 16384}
DEFAULT_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
# (up to this length, use this spacing): padding waste stays under ~1/8 up to 512 tokens.
# Measured on MiniLM / 1,024 passages: fill 0.89 vs 0.75 for powers of two, +20-26%
# throughput, for about twice the programs to compile at warm-up. Past 512 the steps
# grow with the length (four buckets per doubling, padding under 1/4), so a 32k-token
# model has 40 lengths rather than 250.
SEQ_SPACING = (
    (128, 16),
    (256, 32),
    (512, 64),
    (1024, 128),
    (2048, 256),
    (4096, 512),
    (8192, 1024),
    (16384, 2048),
    (32768, 4096),
    (2**31, 8192),
)
# Warm-up compiles buckets up to this length; longer ones compile on first use (logged,
# counted in jaxembed_lazy_compiles_total): long-context models need not wait minutes at
# start-up for lengths nobody may send.
DEFAULT_WARMUP_MAX_LEN = 8192


def default_seq_lengths(max_length: int) -> list[int]:
    lengths, s = [], 0
    for limit, step in SEQ_SPACING:
        while s + step <= min(limit, max_length):
            s += step
            lengths.append(s)
    if not lengths or lengths[-1] != max_length:
        lengths.append(max_length)
    return lengths


@dataclasses.dataclass(frozen=True)
class Bucket:
    batch: int
    seq: int


@dataclasses.dataclass(frozen=True)
class BucketGrid:
    """Sorted sequence lengths and batch sizes, and the most tokens one batch may hold."""

    seq_lengths: tuple[int, ...]
    batch_sizes: tuple[int, ...]
    token_budget: int
    # (length, most rows) where device memory allows fewer rows than the budget would.
    row_caps: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        if not self.seq_lengths or not self.batch_sizes:
            raise ValueError("a bucket grid needs at least one sequence length and batch size")
        if list(self.seq_lengths) != sorted(set(self.seq_lengths)) or self.seq_lengths[0] < 1:
            raise ValueError(f"seq_lengths must be increasing and positive: {self.seq_lengths}")
        if list(self.batch_sizes) != sorted(set(self.batch_sizes)) or self.batch_sizes[0] < 1:
            raise ValueError(f"batch_sizes must be increasing and positive: {self.batch_sizes}")
        if self.token_budget < 1:
            raise ValueError("token_budget must be positive")

    @classmethod
    def for_max_length(
        cls,
        max_length: int,
        token_budget: int,
        batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
        seq_lengths: Sequence[int] | None = None,
    ) -> BucketGrid:
        """`default_seq_lengths` unless given; the model's max length is always a bucket."""
        if seq_lengths is None:
            seq_lengths = default_seq_lengths(max_length)
        seqs = tuple(sorted({min(s, max_length) for s in seq_lengths} | {max_length}))
        return cls(seqs, tuple(sorted(set(batch_sizes))), token_budget)

    @property
    def max_length(self) -> int:
        return self.seq_lengths[-1]

    def seq_bucket(self, length: int) -> int:
        i = bisect.bisect_left(self.seq_lengths, length)
        if i == len(self.seq_lengths):
            raise ValueError(f"length {length} exceeds the largest bucket {self.max_length}")
        return self.seq_lengths[i]

    def max_rows(self, seq: int) -> int:
        """Most rows a batch of length `seq` may have; at least the smallest batch size."""
        cap = dict(self.row_caps).get(seq, self.batch_sizes[-1])
        fitting = [b for b in self.batch_sizes if b * seq <= self.token_budget and b <= cap]
        return fitting[-1] if fitting else self.batch_sizes[0]

    def with_row_cap(self, seq: int, rows: int) -> BucketGrid:
        """This grid with batches of length `seq` limited to `rows` (device memory)."""
        caps = {**dict(self.row_caps), seq: rows}
        return dataclasses.replace(self, row_caps=tuple(sorted(caps.items())))

    def batch_bucket(self, rows: int) -> int:
        i = bisect.bisect_left(self.batch_sizes, rows)
        return self.batch_sizes[min(i, len(self.batch_sizes) - 1)]

    def buckets(self) -> list[Bucket]:
        """Every shape the planner can produce: what warm-up compiles."""
        return [
            Bucket(b, s)
            for s in self.seq_lengths
            for b in self.batch_sizes
            if b <= self.max_rows(s)
        ]


@dataclasses.dataclass(frozen=True)
class PlannedBatch:
    indices: np.ndarray  # positions in the caller's input list, one per input in the batch
    bucket: Bucket
    # Packed batches: the row and the 1-based segment of each input (same order as
    # `indices`); None when every input has a row of its own.
    rows: np.ndarray | None = None
    segments: np.ndarray | None = None

    @property
    def packed(self) -> bool:
        return self.rows is not None


# A packed row holds at most seq / MIN_PACKED_TOKENS sequences (the pooling output's width).
MIN_PACKED_TOKENS = 4
MAX_SEGMENTS = 128


def segments_per_row(seq: int) -> int:
    return max(1, min(MAX_SEGMENTS, seq // MIN_PACKED_TOKENS))


def plan_packed(lengths: Sequence[int], grid: BucketGrid) -> list[PlannedBatch]:
    """Like `plan_batches`, but short inputs share rows (first-fit decreasing).

    Each batch takes the bucket length of the longest input left; its rows are
    filled longest first, each input going into the first row with room (and
    with fewer than `segments_per_row` inputs), so padding is only what no
    remaining input fits into. Inputs that fit no row of this batch wait for the next.
    """
    order = [int(i) for i in np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")]
    batches = []
    while order:
        seq = grid.seq_bucket(int(lengths[order[0]]))
        max_rows, max_segments = grid.max_rows(seq), segments_per_row(seq)
        used: list[int] = []  # tokens per row
        counts: list[int] = []  # inputs per row
        placed: list[tuple[int, int, int]] = []  # (input, row, segment)
        waiting = []
        for index in order:
            length = int(lengths[index])
            row = next(
                (
                    r
                    for r in range(len(used))
                    if used[r] + length <= seq and counts[r] < max_segments
                ),
                None,
            )
            if row is None and len(used) < max_rows:
                used.append(0)
                counts.append(0)
                row = len(used) - 1
            if row is None:
                waiting.append(index)
                continue
            used[row] += length
            counts[row] += 1
            placed.append((index, row, counts[row]))
        indices, rows, segments = (np.asarray(x, dtype=np.int64) for x in zip(*placed, strict=True))
        # Rows that came out shorter than the bucket (a step's last batch, mostly) take a
        # shorter bucket: fewer rows never exceed the budget at a shorter length.
        seq = grid.seq_bucket(max(used))
        batches.append(
            PlannedBatch(indices, Bucket(grid.batch_bucket(len(used)), seq), rows, segments)
        )
        order = waiting
    return batches


def plan_batches(lengths: Sequence[int], grid: BucketGrid) -> list[PlannedBatch]:
    """Group inputs by length into bucket batches; rows of one batch have similar lengths.

    Inputs are sorted longest first; each batch takes as many of the next
    inputs as the budget allows at the bucket of its longest member, so short
    inputs never pay for a long one's padding.
    """
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")
    batches, start = [], 0
    while start < len(order):
        seq = grid.seq_bucket(int(lengths[order[start]]))
        rows = min(grid.max_rows(seq), len(order) - start)
        batches.append(
            PlannedBatch(order[start : start + rows], Bucket(grid.batch_bucket(rows), seq))
        )
        start += rows
    return batches


def pad_batch(
    token_lists: Sequence[np.ndarray], bucket: Bucket, pad_id: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad rows into [bucket.batch, bucket.seq] ids and mask; missing rows are all padding."""
    ids = np.full((bucket.batch, bucket.seq), pad_id, dtype=np.int32)
    mask = np.zeros((bucket.batch, bucket.seq), dtype=np.int32)
    for row, tokens in enumerate(token_lists):
        ids[row, : len(tokens)] = tokens
        mask[row, : len(tokens)] = 1
    return ids, mask


def pad_packed(
    token_lists: Sequence[np.ndarray], planned: PlannedBatch, pad_id: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Packed rows: ids [batch, seq] and segment numbers (1, 2, …; 0 = padding)."""
    bucket = planned.bucket
    ids = np.full((bucket.batch, bucket.seq), pad_id, dtype=np.int32)
    segments = np.zeros((bucket.batch, bucket.seq), dtype=np.int32)
    fill = np.zeros(bucket.batch, dtype=np.int64)
    for tokens, row, segment in zip(token_lists, planned.rows, planned.segments, strict=True):
        start = fill[row]
        ids[row, start : start + len(tokens)] = tokens
        segments[row, start : start + len(tokens)] = segment
        fill[row] += len(tokens)
    return ids, segments
