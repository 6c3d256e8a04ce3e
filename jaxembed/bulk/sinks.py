"""Where a corpus job's vectors go besides its Parquet shards: a small interface, so that a
store is one class (`LanceDBSink` here; pgvector or Qdrant would be the same shape).

A sink receives every finished shard *before* the manifest commits it, so a killed job redoes
that shard: `write` must be an upsert by id (writing the same rows twice leaves them once).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from jaxembed.errors import JaxEmbedError

# Build an ANN index once the table holds this many rows (fewer: exact search is fast enough,
# and IVF partitions need rows to train on).
INDEX_MIN_ROWS = 100_000


class SinkError(JaxEmbedError, ValueError):
    pass


class Sink(Protocol):
    def open(self, card: Any, options: Any) -> None: ...
    def write(self, ids: Sequence[Any], vectors: np.ndarray, tokens: Sequence[int]) -> None: ...
    def finish(self) -> None: ...


def parse_sink(spec: str) -> Sink:
    """`lancedb://DIR[#TABLE]` → a sink."""
    scheme, sep, rest = spec.partition("://")
    if scheme == "lancedb" and sep and rest:
        path, _, table = rest.partition("#")
        return LanceDBSink(Path(path).expanduser(), table or "embeddings")
    raise SinkError(f"unknown --sink {spec!r}; supported: lancedb://DIR[#TABLE]")


class LanceDBSink:
    """An embedded LanceDB table: id, vector (the model's width, float32), tokens; upserted
    by id; an IVF-PQ index built at the end once the table is large enough."""

    def __init__(self, path: Path, table: str = "embeddings", index_min_rows: int = INDEX_MIN_ROWS):
        self.path = path
        self.table_name = table
        self.index_min_rows = index_min_rows
        self.table = None

    def open(self, card: Any, options: Any) -> None:
        try:
            import lancedb
        except ImportError:
            raise SinkError("--sink lancedb:// needs `pip install lancedb`") from None
        if getattr(options, "precision", "float32") != "float32":
            raise SinkError("the LanceDB sink stores float32 vectors: use --precision float32")
        self.db = lancedb.connect(str(self.path))
        names = self.db.table_names() if hasattr(self.db, "table_names") else []
        self.table = self.db.open_table(self.table_name) if self.table_name in names else None

    def write(self, ids: Sequence[Any], vectors: np.ndarray, tokens: Sequence[int]) -> None:
        import pyarrow as pa

        if not len(ids):
            return
        width = vectors.shape[1]
        data = pa.table(
            {
                "id": pa.array(list(ids)),
                "vector": pa.FixedSizeListArray.from_arrays(
                    pa.array(np.ascontiguousarray(vectors, np.float32).reshape(-1)), width
                ),
                "tokens": pa.array(np.asarray(tokens, np.int32)),
            }
        )
        if self.table is None:
            self.table = self.db.create_table(self.table_name, data)
            return
        (
            self.table.merge_insert("id")
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .execute(data)
        )

    def finish(self) -> None:
        if self.table is not None and self.table.count_rows() >= self.index_min_rows:
            self.table.create_index(metric="cosine", vector_column_name="vector", replace=True)
