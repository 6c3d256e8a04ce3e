"""Pooling against a numpy reference; bucket grid and batch planning properties."""

from __future__ import annotations

import numpy as np
import pytest

from jaxembed.engine.batching.buckets import (
    Bucket,
    BucketGrid,
    default_seq_lengths,
    pad_batch,
    plan_batches,
)
from jaxembed.pooling import last_token_index, pool
from jaxembed.vectors import truncate_dimensions

RNG = np.random.default_rng(0)


def _masked_example():
    h = RNG.normal(size=(3, 6, 4)).astype(np.float32)
    mask = np.array(
        [[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]], np.int32
    )  # right, full, left
    return h, mask


@pytest.mark.parametrize("mode", ["cls", "mean", "max", "last_token", "mean_sqrt_len"])
def test_pooling_matches_numpy(mode):
    h, mask = _masked_example()
    got = np.asarray(pool(h, mask, mode))
    for i in range(3):
        real = h[i][mask[i].astype(bool)]
        want = {
            "cls": h[i, 0],
            "mean": real.mean(0),
            "max": real.max(0),
            "last_token": real[-1],
            "mean_sqrt_len": real.sum(0) / np.sqrt(len(real)),
        }[mode]
        np.testing.assert_allclose(got[i], want, rtol=1e-6, atol=1e-6)


def test_pooling_is_float32_for_bfloat16_input():
    h, mask = _masked_example()
    assert pool(h.astype("bfloat16"), mask, "mean").dtype == np.float32


def test_last_token_index_left_and_right_padding():
    _, mask = _masked_example()
    assert np.asarray(last_token_index(mask)).tolist() == [2, 5, 5]


def test_unknown_pooling_is_refused():
    h, mask = _masked_example()
    with pytest.raises(ValueError, match="unknown pooling mode"):
        pool(h, mask, "median")


def test_truncate_dimensions():
    v = RNG.normal(size=(2, 8)).astype(np.float32)
    t = truncate_dimensions(v, 3, normalize=True)
    np.testing.assert_allclose(np.linalg.norm(t, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(truncate_dimensions(v, 3, normalize=False), v[:, :3])
    assert truncate_dimensions(v, None, normalize=True) is v


def test_grid_and_buckets():
    grid = BucketGrid.for_max_length(256, token_budget=512, batch_sizes=(1, 2, 4, 8, 16, 32, 64))
    assert grid.seq_lengths == (16, 32, 48, 64, 80, 96, 112, 128, 160, 192, 224, 256)
    assert grid.seq_bucket(1) == 16 and grid.seq_bucket(17) == 32 and grid.seq_bucket(129) == 160
    assert grid.seq_bucket(256) == 256
    assert grid.max_rows(16) == 32 and grid.max_rows(256) == 2
    assert all(b.batch * b.seq <= 512 for b in grid.buckets())
    assert Bucket(1, 256) in grid.buckets()
    with pytest.raises(ValueError):
        grid.seq_bucket(257)
    assert default_seq_lengths(512)[-4:] == [320, 384, 448, 512]
    assert default_seq_lengths(600)[-2:] == [512, 600]
    odd = BucketGrid.for_max_length(200, token_budget=64)
    assert odd.seq_lengths[-1] == 200 and odd.max_rows(200) == 1  # a single row is always allowed


def test_plan_batches_covers_every_input_once_and_respects_buckets():
    grid = BucketGrid.for_max_length(256, token_budget=512)
    lengths = RNG.integers(1, 257, size=500).tolist()
    plan = plan_batches(lengths, grid)
    seen = np.concatenate([p.indices for p in plan])
    assert sorted(seen.tolist()) == list(range(500))
    for p in plan:
        assert len(p.indices) <= p.bucket.batch
        assert max(lengths[i] for i in p.indices) <= p.bucket.seq
        assert p.bucket in grid.buckets()


def test_pad_batch():
    ids, mask = pad_batch([np.array([5, 6, 7]), np.array([8])], Bucket(4, 16), pad_id=1)
    assert (
        ids.shape == (4, 16) and ids[0, :4].tolist() == [5, 6, 7, 1] and ids[3].tolist() == [1] * 16
    )
    assert mask.sum(1).tolist() == [3, 1, 0, 0]


def test_truncate_dimensions_leaves_its_input_alone():
    """A single row's prefix is contiguous: renormalising it must not write into the caller's array."""
    row = np.arange(1, 9, dtype=np.float32)
    row /= np.linalg.norm(row)
    original = row.copy()
    out = truncate_dimensions(row[None], 4, normalize=True)
    assert np.abs(np.linalg.norm(out) - 1) < 1e-6
    np.testing.assert_array_equal(row, original)
