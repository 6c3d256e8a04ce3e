"""EmbeddingGemma-shaped model vs sentence-transformers: a tiny bidirectional Gemma3 text model
with sliding windows shorter than the inputs, mean pooling, Dense modules and Normalize."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from jaxembed.api import Embedder
from jaxembed.errors import ModelLoadError
from jaxembed.weights.convert import convert
from jaxembed.weights.loader import load_model
from tests.helpers import save_tiny_embedding_gemma
from tests.texts import varied_texts


@pytest.fixture(scope="module")
def gemma(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "tiny-embeddinggemma"
    reference = save_tiny_embedding_gemma(path, seed=21)
    texts = [t for t in varied_texts() if 3 < len(t.split()) < 40][:20]
    return path, texts, reference.encode(texts)


@pytest.mark.parametrize("packing", [True, False])
def test_matches_sentence_transformers(gemma, packing):
    path, texts, want = gemma
    embedder = Embedder.from_pretrained(path, packing=packing, compile_cache_dir=False)
    try:
        assert embedder.card.causal is False and len(embedder.card.projections) == 2
        ours = embedder.embed(texts, truncate=True)
    finally:
        embedder.close()
    assert np.sum(ours * want, axis=1).min() >= 0.99999


def test_bfloat16_conversion_and_float16_refused(gemma, tmp_path):
    path, texts, want = gemma
    half = Embedder.from_pretrained(path, dtype="bfloat16", compile_cache_dir=False)
    convert(path, tmp_path / "out", show_progress=False)
    converted = Embedder.from_pretrained(tmp_path / "out", compile_cache_dir=False)
    try:
        assert np.sum(half.embed(texts, truncate=True) * want, axis=1).min() >= 0.999
        got = converted.embed(texts, truncate=True)
        assert np.sum(got * want, axis=1).min() >= 0.99999
    finally:
        half.close()
        converted.close()
    with pytest.raises(ModelLoadError, match=r"Gemma3.*float16"):
        load_model(path, dtype="float16")


def test_plan_counts_embeddinggemma_shapes():
    """The shipped embeddinggemma-300m card (the shapes of transformers' conversion script for
    EmbeddingGemma, + its 768→3072→768 Dense modules): plan's count from abstract shapes equals
    transformers' Gemma3TextModel plus the Dense weights."""
    import transformers

    from jaxembed.families import model_family
    from jaxembed.parallel.plan import plan_parameters
    from jaxembed.registry import find_card

    card = find_card("embeddinggemma-300m")
    family, ours = model_family(card.architecture, card)
    assert ours.backbone.causal is False and ours.head.kind == "projection"
    counted = plan_parameters(family, ours, 1, 1, "float32").parameters
    config = transformers.Gemma3TextConfig(**card.architecture)
    with torch.device("meta"):
        reference = transformers.Gemma3TextModel(config)
    assert counted == sum(p.numel() for p in reference.parameters()) + 2 * 768 * 3072
    assert counted == 307_581_696
