"""Shards as descriptions: where each shard's rows are, so that any process can read one.

A single-host job streams its inputs and cuts shards as it goes (jaxembed/bulk/sources.py
`iter_shards`). A job spread over many processes (Ray, jaxembed/bulk/ray_job.py) needs each
shard as something small to hand out: `plan_shards` makes one pass over the inputs, without
parsing a row, and describes shard k as the slices of inputs that hold rows
[k * shard_rows, (k + 1) * shard_rows) of the same stream: the same shards, cut at the same
rows. A line format's slice starts at a byte offset; Parquet and `datasets` directories at a
row number (their row counts are in the file metadata). `read_shard` reads one back.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from jaxembed.bulk.sources import (
    Columns,
    DatasetError,
    Position,
    Shard,
    hf_batches,
    open_source,
)


@dataclasses.dataclass(frozen=True)
class Slice:
    """`rows` rows of one input, from `at`."""

    path: str
    fmt: str
    at: Position
    rows: int


@dataclasses.dataclass(frozen=True)
class ShardPlan:
    index: int
    first_row: int  # in the whole stream of rows
    slices: tuple[Slice, ...]

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.slices)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ShardPlan:
        slices = []
        for s in data["slices"]:
            at = dict(s["at"])
            at["header"] = tuple(at["header"]) if at.get("header") is not None else None
            slices.append(Slice(s["path"], s["fmt"], Position(**at), s["rows"]))
        return cls(data["index"], data["first_row"], tuple(slices))


def _line_starts(path: Path, fmt: str) -> Iterator[int]:
    """The byte offset of every row of a JSONL or text file (JSONL's blank lines are none)."""
    offset = 0
    with path.open("rb") as f:
        for line in f:
            if fmt == "text" or line.strip():
                yield offset
            offset += len(line)


def _csv_header_and_starts(path: Path, delimiter: str) -> tuple[tuple[str, ...], Iterator[int]]:
    """A CSV/TSV file's header, and the byte offset of every record (csv's reader takes one
    line at a time, so the bytes consumed when a record is complete are where the next one
    starts, quoted newlines included; empty records are skipped, as `csv.DictReader` does)."""
    f = path.open("rb")
    consumed = 0

    def lines() -> Iterator[str]:
        nonlocal consumed
        for line in f:
            consumed += len(line)
            yield line.decode("utf-8", errors="replace")

    reader = csv.reader(lines(), delimiter=delimiter)
    header = next(reader, None)
    if header is None:
        f.close()
        return (), iter(())

    def starts() -> Iterator[int]:
        with f:
            while True:
                start = consumed
                record = next(reader, None)
                if record is None:
                    return
                if record:
                    yield start

    return tuple(header), starts()


def _row_count(path: Path, fmt: str) -> int:
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    return sum(batch.num_rows for batch in hf_batches(path))


def _pieces(path: Path, fmt: str, room: int, shard_rows: int) -> Iterator[tuple[Position, int]]:
    """One input cut into (start, rows) pieces: the first fills the `room` left in the current
    shard, the others `shard_rows` each (the last shorter)."""
    if not path.exists():
        raise DatasetError(f"{path}: no such file or directory")
    if fmt in ("parquet", "hf"):
        total, start, size = _row_count(path, fmt), 0, room
        while start < total:
            rows = min(size, total - start)
            yield Position(row=start), rows
            start, size = start + rows, shard_rows
        return
    header = None
    if fmt in ("csv", "tsv"):
        header, starts = _csv_header_and_starts(path, "," if fmt == "csv" else "\t")
    else:
        starts = _line_starts(path, fmt)
    row = 0
    size = room
    while True:
        block = list(itertools.islice(starts, size))
        if not block:
            return
        yield Position(row=row, byte=block[0], header=header), len(block)
        row, size = row + len(block), shard_rows


def plan_shards(inputs: Sequence[tuple[Path, str]], shard_rows: int) -> list[ShardPlan]:
    """The shards `iter_shards` would cut from `inputs`, as descriptions."""
    plans: list[ShardPlan] = []
    slices: list[Slice] = []
    filled = 0
    for path, fmt in inputs:
        for at, rows in _pieces(path, fmt, shard_rows - filled, shard_rows):
            slices.append(Slice(str(path), fmt, at, rows))
            filled += rows
            if filled == shard_rows:
                plans.append(ShardPlan(len(plans), len(plans) * shard_rows, tuple(slices)))
                slices, filled = [], 0
    if slices:
        plans.append(ShardPlan(len(plans), len(plans) * shard_rows, tuple(slices)))
    return plans


def read_shard(plan: ShardPlan, columns: Columns) -> Shard:
    """The rows `plan` describes; an input that has changed since it was planned is an error
    (resuming needs the same rows in the same places)."""
    raws: list = []
    parsers: list = []
    for piece in plan.slices:
        stream, parse = open_source(Path(piece.path), piece.fmt, columns, piece.at)
        rows = list(itertools.islice(stream, piece.rows))
        if len(rows) != piece.rows:
            raise DatasetError(
                f"{piece.path}: fewer rows than when the job was planned (was it changed?)"
            )
        raws.extend(rows)
        parsers.extend([parse] * len(rows))
    return Shard(plan.index, plan.first_row, raws, parsers)
