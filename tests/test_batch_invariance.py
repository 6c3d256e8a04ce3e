"""A text's vector does not depend on what it is batched with, or in which bucket it runs."""

from __future__ import annotations

import numpy as np

from jaxembed.api import Embedder

TARGET = "Batch invariance: padded rows and padded positions must not change any real output."


def test_alone_in_a_mixed_batch_and_in_other_buckets(embedder, corpus):
    alone = embedder.embed([TARGET])[0]
    others = corpus[20:83]
    batch = [*others[:31], TARGET, *others[31:]]
    assert len(batch) == 64
    mixed = embedder.embed(batch, truncate=True)[31]
    assert np.abs(alone - mixed).max() <= 1e-6

    # Same weights, a grid whose smallest sequence bucket is 128 and whose batches are large.
    coarse = Embedder(
        embedder.model, seq_lengths=(128, 256), batch_sizes=(8, 64), token_budget=8192
    )
    in_big_bucket = coarse.embed([TARGET])[0]
    assert np.abs(alone - in_big_bucket).max() <= 1e-6
    in_big_batch = coarse.embed(batch, truncate=True)[31]
    assert np.abs(alone - in_big_batch).max() <= 1e-6


def test_rows_come_back_in_input_order(embedder, corpus):
    texts = corpus[:100]
    together = embedder.embed(texts, truncate=True)
    one_by_one = np.stack([embedder.embed([t], truncate=True)[0] for t in texts[::10]])
    assert np.abs(together[::10] - one_by_one).max() <= 1e-6
