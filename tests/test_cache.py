"""The embedding cache: exact keys, LRU eviction within a byte budget, in-request duplicates."""

from __future__ import annotations

import numpy as np

from jaxembed.engine.batching.cache import ENTRY_OVERHEAD_BYTES, EmbeddingCache, assemble


def _rows(*token_lists):
    return [np.asarray(t, dtype=np.int32) for t in token_lists]


def test_hits_misses_and_duplicates():
    cache = EmbeddingCache(max_bytes=1 << 20)
    rows = _rows([1, 2, 3], [4, 5], [1, 2, 3], [1, 2])
    first = cache.lookup(rows)
    assert first.hits == {} and first.to_compute == [0, 1, 3] and first.duplicates == {2: 0}
    computed = np.arange(3 * 4, dtype=np.float32).reshape(3, 4)
    cache.store([first.keys[i] for i in first.to_compute], computed)
    out = assemble(first, computed, 4)
    np.testing.assert_array_equal(out[2], out[0])
    np.testing.assert_array_equal(out[[0, 1, 3]], computed)

    second = cache.lookup(_rows([1, 2], [9], [4, 5]))
    assert set(second.hits) == {0, 2} and second.to_compute == [1]
    np.testing.assert_array_equal(second.hits[0], computed[2])
    np.testing.assert_array_equal(second.hits[2], computed[1])
    assert cache.hits == 2 and cache.misses == 5


def test_stored_vectors_are_private_copies():
    cache = EmbeddingCache(max_bytes=1 << 20)
    look = cache.lookup(_rows([7]))
    batch = np.ones((1, 4), dtype=np.float32)
    cache.store(look.keys, batch)
    batch[:] = 5  # the engine reusing its buffer must not change the cache
    np.testing.assert_array_equal(cache.lookup(_rows([7])).hits[0], np.ones(4))


def test_lru_eviction_keeps_the_byte_budget():
    width = 8
    entry = width * 4 + ENTRY_OVERHEAD_BYTES
    cache = EmbeddingCache(max_bytes=3 * entry)
    for i in range(3):
        look = cache.lookup(_rows([i]))
        cache.store(look.keys, np.full((1, width), i, dtype=np.float32))
    cache.lookup(_rows([0]))  # touch 0: 1 is now the least recently used
    look = cache.lookup(_rows([3]))
    cache.store(look.keys, np.zeros((1, width), dtype=np.float32))
    assert len(cache) == 3 and cache.size_bytes <= cache.max_bytes
    assert cache.lookup(_rows([1])).to_compute == [0]  # evicted
    assert set(cache.lookup(_rows([0], [2], [3])).hits) == {0, 1, 2}


def test_disabled_cache_computes_everything():
    cache = EmbeddingCache(max_bytes=0)
    look = cache.lookup(_rows([1], [1]))
    cache.store([look.keys[0]], np.zeros((1, 2), dtype=np.float32))
    assert cache.lookup(_rows([1])).to_compute == [0] and len(cache) == 0


def test_single_key_get_and_bytes_keys():
    from jaxembed.engine.batching.cache import bytes_key

    cache = EmbeddingCache(1 << 20)
    key = bytes_key(b"\x89PNG same bytes", "image")
    assert key == bytes_key(b"\x89PNG same bytes", "image")
    assert key != bytes_key(b"\x89PNG same bytes", "video")
    assert key != bytes_key(b"\x89PNG other bytes", "image")
    assert cache.get(key) is None and cache.misses == 1
    cache.store([key], np.ones((1, 4), np.float32))
    np.testing.assert_array_equal(cache.get(key), np.ones(4))
    assert cache.hits == 1
    assert EmbeddingCache(0).get(key) is None  # disabled: never a hit
