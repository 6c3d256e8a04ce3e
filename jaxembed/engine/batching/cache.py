"""Content-hash LRU cache of embeddings, so repeated inputs cost no device time.

Keyed by a hash of the exact token ids a row would run with (prompts and
truncation already applied), so a hit is the vector the engine produced for
that very sequence: rows are batch-invariant (≤ 1e-6), so a cached vector
equals a fresh one to that tolerance. Vectors are stored at full width;
matryoshka truncation happens after the lookup. Bounded in bytes, least
recently used evicted first; thread-safe (the event loop and the batcher's
threads both touch it).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import threading
from collections.abc import Sequence

import numpy as np

# Per-entry bookkeeping beyond the vector (key, OrderedDict node, array header), measured
# roughly with tracemalloc; only used to keep the byte budget honest.
ENTRY_OVERHEAD_BYTES = 200


def token_key(tokens: np.ndarray | Sequence[int], namespace: str = "") -> bytes:
    """Hash of the token ids within a namespace (the LoRA adapter; "" = the base model)."""
    digest = hashlib.blake2b(namespace.encode() + b"\0", digest_size=16)
    digest.update(np.asarray(tokens, dtype=np.int32).tobytes())
    return digest.digest()


def bytes_key(data: bytes, namespace: str) -> bytes:
    """Hash of raw content (an image file's bytes) within a namespace (e.g. "image")."""
    digest = hashlib.blake2b(namespace.encode() + b"\0", digest_size=16)
    digest.update(data)
    return digest.digest()


@dataclasses.dataclass
class Lookup:
    """Result of `EmbeddingCache.lookup` for one request's rows."""

    hits: dict[int, np.ndarray]  # row index -> cached vector
    to_compute: list[int]  # row indices to run, one per distinct uncached sequence
    duplicates: dict[int, int]  # row index -> the row in `to_compute` with the same tokens
    keys: list[bytes]


class EmbeddingCache:
    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._entries: collections.OrderedDict[bytes, np.ndarray] = collections.OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, token_lists: Sequence[np.ndarray], namespace: str = "") -> Lookup:
        """Split rows into cache hits, rows to compute, and in-request duplicates of those."""
        keys = [token_key(t, namespace) for t in token_lists]
        hits: dict[int, np.ndarray] = {}
        first_row: dict[bytes, int] = {}
        duplicates: dict[int, int] = {}
        to_compute: list[int] = []
        with self._lock:
            for i, key in enumerate(keys):
                vector = self._entries.get(key) if self.enabled else None
                if vector is not None:
                    self._entries.move_to_end(key)
                    hits[i] = vector
                elif key in first_row:
                    duplicates[i] = first_row[key]
                else:
                    first_row[key] = i
                    to_compute.append(i)
            self.hits += len(hits)
            self.misses += len(to_compute) + len(duplicates)
        return Lookup(hits, to_compute, duplicates, keys)

    def get(self, key: bytes) -> np.ndarray | None:
        """One entry by key (counted as a hit or a miss), or None."""
        with self._lock:
            vector = self._entries.get(key) if self.enabled else None
            if vector is None:
                self.misses += 1
            else:
                self._entries.move_to_end(key)
                self.hits += 1
            return vector

    def store(self, keys: Sequence[bytes], vectors: np.ndarray) -> None:
        if not self.enabled:
            return
        with self._lock:
            for key, vector in zip(keys, vectors, strict=True):
                if key in self._entries:
                    self._entries.move_to_end(key)
                    continue
                copy = np.array(vector, dtype=np.float32, copy=True)  # never a view of a batch
                copy.setflags(write=False)
                self._entries[key] = copy
                self._bytes += copy.nbytes + ENTRY_OVERHEAD_BYTES
            while self._bytes > self.max_bytes and self._entries:
                _, old = self._entries.popitem(last=False)
                self._bytes -= old.nbytes + ENTRY_OVERHEAD_BYTES


def assemble(lookup: Lookup, computed: np.ndarray, width: int) -> np.ndarray:
    """All rows of a request from cache hits, computed rows (in `to_compute` order) and duplicates."""
    n = len(lookup.keys)
    out = np.empty((n, width), dtype=np.float32)
    for i, vector in lookup.hits.items():
        out[i] = vector
    if lookup.to_compute:
        out[lookup.to_compute] = computed
    for i, source in lookup.duplicates.items():
        out[i] = out[source]
    return out
