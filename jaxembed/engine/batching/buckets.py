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


# Accelerators with packing on: rows are filled to their length from many short inputs, so a
# few lengths cover all traffic (padding is only what no waiting input fits) and the grid
# compiles in seconds; each length's largest batch fills the token budget.
PACKED_SEQ_LENGTHS = (64, 128, 256, 512)
PACKED_BATCH_SIZES = (1, 4, 16, 32, 64, 128, 256)


def packed_seq_lengths(max_length: int) -> list[int]:
    """The packing-first lengths up to `max_length`, then the usual spacing past 512."""
    short = [s for s in PACKED_SEQ_LENGTHS if s < max_length]
    return short + [s for s in default_seq_lengths(max_length) if s > PACKED_SEQ_LENGTHS[-1]]


def default_token_budget(backend: str) -> int:
    """Padded tokens one device batch may hold on `backend` (jax.default_backend())."""
    return DEFAULT_TOKEN_BUDGET.get(backend, DEFAULT_TOKEN_BUDGET["gpu"])


def data_parallel_grid_options(
    data: int, token_budget: int, batch_sizes: Sequence[int]
) -> tuple[int, tuple[int, ...]]:
    """Budget and batch sizes for a batch split over `data` devices.

    The token budget is per data shard (what one device computes at once), so
    a batch may hold `data` times as many tokens, and every batch size must be a
    multiple of `data` so each device gets the same number of rows.
    """
    sizes = tuple(sorted({-(-b // data) * data for b in batch_sizes}))
    return token_budget * data, sizes


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

    def seq_buckets(self, lengths: np.ndarray) -> np.ndarray:
        """`seq_bucket` of every length at once (lengths within the grid's maximum)."""
        grid = np.asarray(self.seq_lengths, dtype=np.int64)
        return grid[np.minimum(np.searchsorted(grid, lengths), len(grid) - 1)]

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


def plan_packed(lengths: Sequence[int] | np.ndarray, grid: BucketGrid) -> list[PlannedBatch]:
    """Like `plan_batches`, but short inputs share rows: best-fit decreasing, in one pass.

    Inputs, longest first, go into the open row with the least room that takes them (best
    fit), else start a new row. Rows are created longest first and belong to batches in
    that order: a batch has the bucket length of its first row's input and at most the
    grid's rows for that length, and every row of it has that length as room; a row holds
    at most `segments_per_row` inputs. Linear in the inputs up to a log factor (and a
    memmove per placement), however many batches they make.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    packed = _pack_rows(lengths[order].tolist(), grid)
    rows = np.asarray(packed.rows, dtype=np.int64)
    segments = np.asarray(packed.segments, dtype=np.int64)
    by_row = np.argsort(rows, kind="stable")  # inputs grouped by row, in placement order
    row_starts = np.searchsorted(rows[by_row], np.arange(len(packed.used) + 1))
    batches = []
    for first, last in zip(
        packed.batch_starts, [*packed.batch_starts[1:], len(packed.used)], strict=True
    ):
        members = by_row[row_starts[first] : row_starts[last]]
        # Rows that came out shorter than their bucket take a shorter bucket: fewer tokens
        # never exceed the budget at a shorter length.
        longest = max(packed.used[first:last])
        bucket = Bucket(grid.batch_bucket(last - first), grid.seq_bucket(longest))
        batches.append(
            PlannedBatch(order[members], bucket, rows[members] - first, segments[members])
        )
    return batches


@dataclasses.dataclass
class _PackedRows:
    rows: list[int] = dataclasses.field(default_factory=list)  # per input
    segments: list[int] = dataclasses.field(default_factory=list)  # per input, 1-based
    used: list[int] = dataclasses.field(default_factory=list)  # tokens per row
    batch_starts: list[int] = dataclasses.field(default_factory=list)  # first row of each batch


def _pack_rows(lengths: list[int], grid: BucketGrid) -> _PackedRows:
    """Rows for inputs of `lengths` (longest first): best fit into the open rows (a sorted
    list of (room, row), bisected), else a new row of the current batch, else a new batch."""
    out = _PackedRows()
    open_rows: list[tuple[int, int]] = []  # (room, row), sorted, over rows that can take more
    counts: list[int] = []
    seq = max_rows = max_segments = 0  # of the batch rows are being added to
    shortest = lengths[-1] if lengths else 0  # a row with less room can take nothing more
    for length in lengths:
        at = bisect.bisect_left(open_rows, (length, -1))
        if at < len(open_rows):
            room, row = open_rows.pop(at)
        else:
            if not out.batch_starts or len(out.used) - out.batch_starts[-1] >= max_rows:
                out.batch_starts.append(len(out.used))
                seq = grid.seq_bucket(length)
                max_rows, max_segments = grid.max_rows(seq), segments_per_row(seq)
            row, room = len(out.used), seq
            out.used.append(0)
            counts.append(0)
        out.used[row] += length
        counts[row] += 1
        out.rows.append(row)
        out.segments.append(counts[row])
        if counts[row] < max_segments and room - length >= shortest:
            bisect.insort(open_rows, (room - length, row))
    return out


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


def _flat_positions(lengths: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Every token's index in a flattened [batch, seq] array: input i's tokens go to
    starts[i], starts[i] + 1, ... (one vectorised pass over all tokens)."""
    total = int(lengths.sum())
    offsets = np.cumsum(lengths) - lengths  # where each input begins in the concatenation
    within = np.arange(total, dtype=np.int64) - np.repeat(offsets, lengths)
    return np.repeat(starts, lengths) + within


def pad_batch(
    token_lists: Sequence[np.ndarray], bucket: Bucket, pad_id: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad rows into [bucket.batch, bucket.seq] ids and mask; missing rows are all padding."""
    ids = np.full((bucket.batch, bucket.seq), pad_id, dtype=np.int32)
    mask = np.zeros((bucket.batch, bucket.seq), dtype=np.int32)
    if len(token_lists):
        lengths = np.fromiter(map(len, token_lists), dtype=np.int64, count=len(token_lists))
        flat = _flat_positions(lengths, np.arange(len(token_lists), dtype=np.int64) * bucket.seq)
        ids.reshape(-1)[flat] = np.concatenate(token_lists)
        mask.reshape(-1)[flat] = 1
    return ids, mask


def pad_packed(
    token_lists: Sequence[np.ndarray], planned: PlannedBatch, pad_id: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Packed rows: ids [batch, seq] and segment numbers (1, 2, …; 0 = padding); inputs go
    into their row in order (segments numbered as placed, as `plan_packed` numbers them)."""
    bucket = planned.bucket
    ids = np.full((bucket.batch, bucket.seq), pad_id, dtype=np.int32)
    segments = np.zeros((bucket.batch, bucket.seq), dtype=np.int32)
    if not len(token_lists):
        return ids, segments
    lengths = np.fromiter(map(len, token_lists), dtype=np.int64, count=len(token_lists))
    rows = np.asarray(planned.rows, dtype=np.int64)
    # Each input starts after the inputs placed before it in the same row.
    by_row = np.argsort(rows, kind="stable")
    sorted_rows = rows[by_row]
    ends = np.cumsum(lengths[by_row])
    row_first = np.searchsorted(sorted_rows, sorted_rows)  # first input of each one's row
    row_base = np.where(row_first > 0, ends[row_first - 1], 0)
    starts = np.empty_like(lengths)
    starts[by_row] = ends - lengths[by_row] - row_base
    flat = _flat_positions(lengths, rows * bucket.seq + starts)
    ids.reshape(-1)[flat] = np.concatenate(token_lists)
    segments.reshape(-1)[flat] = np.repeat(np.asarray(planned.segments, np.int32), lengths)
    return ids, segments
