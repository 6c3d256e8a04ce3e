"""What a corpus job leaves in its output directory, and the manifest that commits it.

    DIR/part-00000.parquet          id, embedding, tokens — one file per input shard (none
                                    for a shard whose rows were all bad)
    DIR/_manifest.json              the job (model, card hash, options, inputs) and every
                                    finished shard: rows, error rows, the file's sha256
    DIR/_errors/part-00000.jsonl    {"row", "id", "reason"} per bad row of that shard

(Names starting with `_` are what Arrow's dataset readers skip: `pyarrow.parquet.read_table
(DIR)`, `pandas.read_parquet(DIR)`, DuckDB's `DIR/*.parquet` read the vectors alone.)

A shard's files are written under temporary names and renamed into place; the manifest
(rewritten atomically after each shard) is the commit point: a file the manifest does not
list is an unfinished shard, deleted and redone on the next run. So a job killed at any
moment and run again ends with every input row exactly once: in a part file, or in an
errors file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxembed.errors import JaxEmbedError

MANIFEST = "_manifest.json"
ERRORS_DIR = "_errors"


class OutputError(JaxEmbedError, ValueError):
    """An output directory that holds another job, or cannot be written."""


def part_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def errors_name(index: int) -> str:
    return f"{ERRORS_DIR}/part-{index:05d}.jsonl"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@dataclasses.dataclass
class Manifest:
    """The job's identity and its finished shards (`shards[str(index)]`)."""

    job: dict[str, Any]
    shards: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    @classmethod
    def open(cls, out_dir: Path, job: dict[str, Any]) -> Manifest:
        """The directory's manifest for `job` (a new one if there is none); another job's is
        refused, and files no finished shard owns (a killed run's) are removed."""
        path = out_dir / MANIFEST
        if not path.is_file():
            if out_dir.exists() and any(p.suffix == ".parquet" for p in out_dir.iterdir()):
                raise OutputError(
                    f"{out_dir} holds Parquet files but no {MANIFEST}: not a jaxembed job's "
                    "output; choose an empty or new --output"
                )
            manifest = cls(job)
        else:
            saved = json.loads(path.read_text())
            if saved.get("job") != job:
                differ = sorted(
                    k
                    for k in set(job) | set(saved.get("job", {}))
                    if job.get(k) != saved.get("job", {}).get(k)
                )
                raise OutputError(
                    f"{out_dir} holds a job with other settings (they differ in: "
                    f"{', '.join(differ)}); rerun with the same command to resume, or choose "
                    "a new --output"
                )
            manifest = cls(job, saved.get("shards", {}))
        manifest._remove_uncommitted(out_dir)
        return manifest

    def _remove_uncommitted(self, out_dir: Path) -> None:
        owned = {name for s in self.shards.values() for name in (s["file"], s["errors_file"])}
        owned.discard(None)
        for path in [*out_dir.glob("part-*"), *out_dir.glob(f"{ERRORS_DIR}/part-*")]:
            if str(path.relative_to(out_dir)) not in owned:
                path.unlink()

    def done(self, index: int) -> bool:
        return str(index) in self.shards

    def commit(self, out_dir: Path, index: int, record: dict[str, Any]) -> None:
        self.shards[str(index)] = record
        body = {"job": self.job, "shards": dict(sorted(self.shards.items(), key=_by_index))}
        _atomic_write(out_dir / MANIFEST, (json.dumps(body, indent=2) + "\n").encode())

    def totals(self) -> tuple[int, int]:
        """(rows written, bad rows) over the finished shards."""
        return (
            sum(s["rows"] for s in self.shards.values()),
            sum(s["error_rows"] for s in self.shards.values()),
        )


def _by_index(item: tuple[str, Any]) -> int:
    return int(item[0])


def write_shard(
    out_dir: Path,
    index: int,
    ids: Sequence[Any],
    vectors: np.ndarray,
    tokens: Sequence[int],
    errors: Sequence[dict[str, Any]],
) -> dict[str, Any]:
    """Write one shard's part file (none without rows) and errors file, atomically each;
    its manifest record."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    part = out_dir / part_name(index) if len(ids) else None
    if part is not None:
        table = pa.table(
            {
                "id": _id_array(ids),
                "embedding": _vector_array(vectors),
                "tokens": pa.array(np.asarray(tokens, dtype=np.int32), type=pa.int32()),
            }
        )
        tmp = part.with_name(part.name + ".tmp")
        pq.write_table(table, tmp, compression="zstd")
        with tmp.open("rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, part)
    (out_dir / ERRORS_DIR).mkdir(exist_ok=True)
    lines = "".join(json.dumps(e, default=str) + "\n" for e in errors)
    _atomic_write(out_dir / errors_name(index), lines.encode())
    return {
        "file": part.name if part is not None else None,
        "errors_file": errors_name(index),
        "rows": len(ids),
        "error_rows": len(errors),
        "sha256": sha256_file(part) if part is not None else None,
    }


def _id_array(ids: Sequence[Any]):
    """Ids as they came (integers stay integers); a mix of kinds as strings."""
    import pyarrow as pa

    try:
        return pa.array(list(ids))
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([str(i) for i in ids], type=pa.string())


def _vector_array(vectors: np.ndarray):
    """[N, D] vectors as a fixed-size list column of their dtype (float32, or int8/uint8 for
    quantized precisions: packed bits for binary/ubinary)."""
    import pyarrow as pa

    vectors = np.ascontiguousarray(vectors)
    width = vectors.shape[1] if vectors.ndim == 2 else 0
    flat = pa.array(vectors.reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, width)
