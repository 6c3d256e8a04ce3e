"""Reading a corpus as one stream of rows, cut into fixed shards.

Inputs are read in the order given, each as a stream (a 10-million-row file never sits in
memory): JSONL, plain text (a row per line), CSV/TSV, Parquet and local Hugging Face
`datasets` directories (`save_to_disk`: Arrow stream files). Shard k is rows
[k * shard_rows, (k + 1) * shard_rows) of that stream, so a rerun cuts exactly the same
shards; a finished shard is skipped without parsing its rows (JSONL lines are only split).

A row is (row number, id, text): the id is `id_column`'s value, or the row number.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from jaxembed.errors import JaxEmbedError

FORMATS = ("jsonl", "parquet", "csv", "tsv", "text", "hf")
_SUFFIXES = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".csv": "csv",
    ".tsv": "tsv",
    ".txt": "text",
}


@dataclasses.dataclass(frozen=True)
class Unreadable:
    """A row's text when the row could not be read: the job records the reason."""

    reason: str


class DatasetError(JaxEmbedError, ValueError):
    """An input that cannot be read as a dataset at all (not one bad row)."""


def detect_format(path: Path) -> str:
    if path.is_dir():
        if (path / "dataset_info.json").is_file() or (path / "state.json").is_file():
            return "hf"
        raise DatasetError(f"{path}: a directory, but not a `datasets` save_to_disk directory")
    fmt = _SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise DatasetError(
            f"{path}: cannot tell its format from the suffix; pass --input-format "
            f"({', '.join(FORMATS)})"
        )
    return fmt


@dataclasses.dataclass(frozen=True)
class Columns:
    text: str = "text"
    id: str | None = None  # None: the row number is the id


# A raw record and how to turn it into (id or None, text or Unreadable).
Raw = Any
Parser = Callable[[Raw], tuple[Any, Any]]


def _field_parser(columns: Columns) -> Callable[[dict], tuple[Any, Any]]:
    def parse(record: Any) -> tuple[Any, Any]:
        if not isinstance(record, dict):
            return None, Unreadable("not an object")
        if columns.text not in record:
            return record.get(columns.id) if columns.id else None, Unreadable(
                f"no {columns.text!r} field"
            )
        return (record.get(columns.id) if columns.id else None), record[columns.text]

    return parse


@dataclasses.dataclass(frozen=True)
class Position:
    """Where a row starts in an input: its row number there, and for the line formats its
    byte offset (and a CSV/TSV file's header, which a reader starting mid-file needs)."""

    row: int = 0
    byte: int = 0
    header: tuple[str, ...] | None = None


def _jsonl(path: Path, columns: Columns, at: Position) -> tuple[Iterator[Raw], Parser]:
    fields = _field_parser(columns)

    def lines() -> Iterator[bytes]:
        with path.open("rb") as f:
            f.seek(at.byte)
            for line in f:
                if line.strip():
                    yield line

    def parse(line: bytes) -> tuple[Any, Any]:
        try:
            return fields(json.loads(line))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            return None, Unreadable(f"not valid JSON: {e}")

    return lines(), parse


def _text(path: Path, columns: Columns, at: Position) -> tuple[Iterator[Raw], Parser]:
    def lines() -> Iterator[bytes]:
        with path.open("rb") as f:
            f.seek(at.byte)
            yield from f

    def parse(line: bytes) -> tuple[Any, Any]:
        try:
            return None, line.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as e:
            return None, Unreadable(f"not UTF-8: {e}")

    return lines(), parse


def _decoded_lines(f) -> Iterator[str]:
    """A binary file's lines as text (split on b"\\n" only, so that a byte offset of a line
    start is where a reader can start again)."""
    for line in f:
        yield line.decode("utf-8", errors="replace")


def _delimited(
    path: Path, columns: Columns, delimiter: str, at: Position
) -> tuple[Iterator[Raw], Parser]:
    def rows() -> Iterator[dict]:
        with path.open("rb") as f:
            f.seek(at.byte)
            reader = csv.DictReader(_decoded_lines(f), fieldnames=at.header, delimiter=delimiter)
            if reader.fieldnames is None or columns.text not in reader.fieldnames:
                raise DatasetError(
                    f"{path}: no column {columns.text!r} (columns: {reader.fieldnames}); "
                    "pass --text-column"
                )
            yield from reader

    return rows(), _field_parser(columns)


def _arrow_batches(batches: Iterator[Any], columns: Columns, where: Path) -> Iterator[tuple]:
    """(id, text) per row of Arrow record batches, only the columns needed."""
    for batch in batches:
        names = batch.schema.names
        if columns.text not in names:
            raise DatasetError(f"{where}: no column {columns.text!r} (columns: {names})")
        if columns.id and columns.id not in names:
            raise DatasetError(f"{where}: no column {columns.id!r} (columns: {names})")
        texts = batch.column(columns.text).to_pylist()
        ids = batch.column(columns.id).to_pylist() if columns.id else [None] * len(texts)
        yield from zip(ids, texts, strict=True)


def _skip_rows(batches: Iterator[Any], rows: int) -> Iterator[Any]:
    """Record batches from row `rows` on (whole batches before it are not converted)."""
    for batch in batches:
        if rows >= batch.num_rows:
            rows -= batch.num_rows
            continue
        yield batch.slice(rows) if rows else batch
        rows = 0


def _parquet(path: Path, columns: Columns, at: Position) -> tuple[Iterator[Raw], Parser]:
    import pyarrow.parquet as pq

    wanted = [c for c in (columns.text, columns.id) if c]
    file = pq.ParquetFile(path)
    names = file.schema_arrow.names
    missing = [c for c in wanted if c not in names]
    if missing:
        raise DatasetError(f"{path}: no column(s) {missing} (columns: {names})")
    groups, skip, first = [], at.row, 0  # the row groups from the one holding `at.row`
    for g in range(file.metadata.num_row_groups):
        size = file.metadata.row_group(g).num_rows
        if first + size > at.row:
            groups.append(g)
        else:
            skip -= size
        first += size
    batches = file.iter_batches(batch_size=4096, columns=wanted, row_groups=groups)
    return _arrow_batches(_skip_rows(batches, skip), columns, path), lambda pair: pair


def hf_batches(path: Path) -> Iterator[Any]:
    """`Dataset.save_to_disk`: `state.json` lists the Arrow stream files in order."""
    import pyarrow as pa

    state = json.loads((path / "state.json").read_text())
    files = [path / f["filename"] for f in state.get("_data_files", [])]
    if not files:
        raise DatasetError(f"{path}: state.json lists no data files")
    for file in files:
        with pa.memory_map(str(file)) as source:
            yield from pa.ipc.open_stream(source)


def _hf_dataset(path: Path, columns: Columns, at: Position) -> tuple[Iterator[Raw], Parser]:
    batches = _skip_rows(hf_batches(path), at.row)
    return _arrow_batches(batches, columns, path), lambda pair: pair


def open_source(
    path: Path, fmt: str, columns: Columns, at: Position = Position()
) -> tuple[Iterator[Raw], Parser]:
    """The raw records of an input from `at` (its start by default), and their parser."""
    if not path.exists():
        raise DatasetError(f"{path}: no such file or directory")
    if fmt == "jsonl":
        return _jsonl(path, columns, at)
    if fmt == "text":
        return _text(path, columns, at)
    if fmt in ("csv", "tsv"):
        return _delimited(path, columns, "," if fmt == "csv" else "\t", at)
    if fmt == "parquet":
        return _parquet(path, columns, at)
    if fmt == "hf":
        return _hf_dataset(path, columns, at)
    raise DatasetError(f"unknown input format {fmt!r} (one of {FORMATS})")


def count_rows(path: Path, fmt: str) -> int | None:
    """Rows of an input without parsing it (for the progress bar's ETA), when cheap."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    if fmt == "hf":
        info = (
            json.loads((path / "dataset_info.json").read_text())
            if (path / "dataset_info.json").is_file()
            else {}
        )
        splits = info.get("splits") or {}
        counts = [s.get("num_examples") for s in splits.values() if isinstance(s, dict)]
        return sum(counts) if counts and all(isinstance(c, int) for c in counts) else None
    if fmt in ("jsonl", "text"):  # lines (JSONL's blank lines are no rows: an upper bound)
        total = 0
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 24), b""):
                total += block.count(b"\n")
            size = f.tell()
        return total + (size > 0 and not _ends_with_newline(path))
    return None


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


@dataclasses.dataclass
class Shard:
    index: int
    first_row: int  # the row number of its first row in the whole stream
    raws: list  # raw records, parsed only if the shard is embedded
    parsers: list  # the parser of each raw record's input

    def __len__(self) -> int:
        return len(self.raws)

    def rows(self) -> Iterator[tuple[int, Any, Any]]:
        """(row number, id, text or Unreadable) per row; the id defaults to the row number."""
        for offset, (raw, parse) in enumerate(zip(self.raws, self.parsers, strict=True)):
            row = self.first_row + offset
            row_id, text = parse(raw)
            yield row, row if row_id is None else row_id, text


def iter_shards(
    inputs: Sequence[tuple[Path, str]], columns: Columns, shard_rows: int
) -> Iterator[Shard]:
    """The rows of every input, in order, as shards of `shard_rows` rows (the last shorter)."""
    raws: list = []
    parsers: list = []
    index = first = 0
    for path, fmt in inputs:
        stream, parse = open_source(path, fmt, columns)
        for raw in stream:
            raws.append(raw)
            parsers.append(parse)
            if len(raws) == shard_rows:
                yield Shard(index, first, raws, parsers)
                index, first = index + 1, first + shard_rows
                raws, parsers = [], []
    if raws:
        yield Shard(index, first, raws, parsers)


def input_fingerprint(path: Path) -> dict[str, Any]:
    """What identifies an input for resuming: its path, size and modification time."""
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        size = sum(p.stat().st_size for p in files)
        mtime = max((p.stat().st_mtime_ns for p in files), default=0)
    else:
        stat = path.stat()
        size, mtime = stat.st_size, stat.st_mtime_ns
    return {"path": str(path.resolve()), "bytes": size, "mtime_ns": mtime}
