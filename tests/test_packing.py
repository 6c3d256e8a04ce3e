"""Sequence packing: several inputs per row with a segment mask give exactly the unpacked result."""

from __future__ import annotations

import numpy as np
import pytest

from jaxembed.api import Embedder
from jaxembed.engine.batching.buckets import (
    BucketGrid,
    pad_packed,
    plan_batches,
    plan_packed,
    segments_per_row,
)
from jaxembed.pooling import PACKABLE_POOLING
from tests.helpers import save_tiny_decoder, save_tiny_model


def _grid(budget: int = 512) -> BucketGrid:
    return BucketGrid.for_max_length(256, budget)


@pytest.mark.parametrize("seed", range(5))
def test_plan_packed_places_every_input_once_within_rows(seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 257, rng.integers(1, 300)).tolist()
    grid = _grid()
    seen = []
    for planned in plan_packed(lengths, grid):
        bucket = planned.bucket
        assert bucket in grid.buckets()
        assert len(planned.indices) == len(planned.rows) == len(planned.segments)
        for row in range(bucket.batch):
            in_row = planned.rows == row
            used = sum(lengths[i] for i in planned.indices[in_row])
            assert used <= bucket.seq
            segments = sorted(planned.segments[in_row].tolist())
            assert segments == list(range(1, len(segments) + 1))  # numbered 1..n in order
            assert len(segments) <= segments_per_row(bucket.seq)
        seen += planned.indices.tolist()
    assert sorted(seen) == list(range(len(lengths)))


def test_packing_fills_batches_better_than_padding():
    rng = np.random.default_rng(0)
    lengths = np.clip(rng.lognormal(3.5, 0.8, 1000).astype(int), 3, 256).tolist()
    grid = _grid()

    def fill(plan) -> float:
        return sum(lengths) / sum(p.bucket.batch * p.bucket.seq for p in plan)

    assert fill(plan_packed(lengths, grid)) > max(0.9, fill(plan_batches(lengths, grid)) + 0.05)


def test_pad_packed_lays_out_segments_in_order():
    grid = BucketGrid((8,), (1, 2), 16)
    tokens = [np.array([5, 6, 7]), np.array([8, 9]), np.array([1, 2, 3, 4, 5]), np.array([4])]
    (planned,) = plan_packed([len(t) for t in tokens], grid)
    batch = [tokens[i] for i in planned.indices]
    ids, segments = pad_packed(batch, planned, pad_id=0)
    assert ids.shape == segments.shape == (2, 8)
    for tok, row, seg in zip(batch, planned.rows, planned.segments, strict=True):
        where = np.flatnonzero(segments[row] == seg)
        assert ids[row, where].tolist() == tok.tolist()
        assert where.tolist() == list(range(where[0], where[0] + len(tok)))  # contiguous
    assert (ids[segments == 0] == 0).all()


@pytest.mark.parametrize("family", ["bert", "roberta", "xlm-roberta"])
@pytest.mark.parametrize("pooling", PACKABLE_POOLING)
def test_packed_equals_unpacked_for_tiny_encoders(tmp_path, family, pooling):
    save_tiny_model(family, tmp_path, seed=2, pooling=pooling)
    packed = Embedder.from_pretrained(tmp_path, packing=True, compile_cache_dir=False)
    plain = Embedder.from_pretrained(tmp_path, packing=False, compile_cache_dir=False)
    rng = np.random.default_rng(1)
    token_lists = [
        rng.integers(5, 30000, n).astype(np.int32) for n in rng.integers(2, 64, 40).tolist()
    ]
    if family != "bert":
        token_lists[3][2] = 1  # a pad id inside a real input: RoBERTa positions skip it
    ours, reference = packed.embed_token_lists(token_lists), plain.embed_token_lists(token_lists)
    assert len(packed.plan(token_lists)) < len(plain.plan(token_lists))  # it did pack
    np.testing.assert_allclose(ours, reference, atol=2e-6)


def test_packed_minilm_equals_unpacked(embedder, corpus):
    assert embedder.packing  # the default for the embedded model
    plain = Embedder(embedder.model, packing=False)
    texts = corpus[:200]
    ours = embedder.embed(texts, truncate=True)
    reference = plain.embed(texts, truncate=True)
    assert ((ours * reference).sum(axis=1) >= 0.99999).all()
    np.testing.assert_allclose(ours, reference, atol=1e-6)


@pytest.mark.parametrize("family", ["mistral", "qwen2", "qwen3"])
def test_packed_equals_unpacked_for_tiny_decoders(tmp_path, family):
    """Causal masks, RoPE positions and Mistral's sliding window (8, shorter than the inputs)
    all restart per packed sequence; last-token pooling picks each sequence's EOS."""
    save_tiny_decoder(family, tmp_path)
    packed = Embedder.from_pretrained(tmp_path, packing=True, compile_cache_dir=False)
    plain = Embedder.from_pretrained(tmp_path, packing=False, compile_cache_dir=False)
    assert packed.packing and packed.card.pooling == "last_token"
    rng = np.random.default_rng(3)
    token_lists = [
        rng.integers(5, 30000, n).astype(np.int32) for n in rng.integers(2, 40, 30).tolist()
    ]
    ours, reference = packed.embed_token_lists(token_lists), plain.embed_token_lists(token_lists)
    assert len(packed.plan(token_lists)) < len(plain.plan(token_lists))
    np.testing.assert_allclose(ours, reference, atol=2e-5)


def test_packing_is_refused_or_off_where_it_cannot_apply(tmp_path):
    from tests.helpers import save_tiny_clip

    save_tiny_clip(tmp_path / "clip")
    clip = Embedder.from_pretrained(tmp_path / "clip", compile_cache_dir=False)
    assert not clip.can_pack and not clip.packing
    with pytest.raises(ValueError, match="cannot pack"):
        clip.set_packing(True)
    save_tiny_model("bert", tmp_path / "max", pooling="max")
    assert not Embedder.from_pretrained(tmp_path / "max", compile_cache_dir=False).packing
    save_tiny_model("bert", tmp_path / "bert")
    encoder = Embedder.from_pretrained(tmp_path / "bert", compile_cache_dir=False)
    assert encoder.packing
    encoder.enable_lora(max_loras=1, max_rank=4)
    assert not encoder.packing and not encoder.runner.packed  # adapters apply per row
