"""sentence-transformers Dense modules after pooling (as EmbeddingGemma has): read from their
own directories, applied in the compiled program, equal to SentenceTransformer.encode."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from jaxembed.api import Embedder
from jaxembed.weights.convert import convert
from tests.helpers import save_tiny_model

TEXTS = ["a dog barks at night", "the quick brown fox jumps", "hello", "embeddings, projected"]


@pytest.fixture(scope="module")
def projected(tmp_path_factory):
    from sentence_transformers import SentenceTransformer, models

    base = tmp_path_factory.mktemp("base")
    save_tiny_model("bert", base, seed=1)
    torch.manual_seed(0)
    transformer = models.Transformer(str(base))
    modules = [
        transformer,
        models.Pooling(transformer.get_word_embedding_dimension(), "mean"),
        models.Dense(32, 48, bias=True, activation_function=torch.nn.Tanh()),
        models.Dense(48, 16, bias=False, activation_function=torch.nn.Identity()),
        models.Normalize(),
    ]
    path = tmp_path_factory.mktemp("projected")
    SentenceTransformer(modules=modules, device="cpu").save(str(path))
    return path, SentenceTransformer(str(path), device="cpu").encode(TEXTS)


def test_dense_modules_match_sentence_transformers(projected):
    path, reference = projected
    embedder = Embedder.from_pretrained(path, compile_cache_dir=False)
    try:
        card = embedder.card
        assert card.dimensions == 16 and [p["activation"] for p in card.projections] == [
            "tanh",
            "identity",
        ]
        ours = embedder.embed(TEXTS)
    finally:
        embedder.close()
    assert ours.shape == (4, 16)
    assert np.sum(ours * reference, axis=1).min() >= 0.99999


def test_converted_checkpoint_keeps_the_projections(projected, tmp_path):
    path, reference = projected
    convert(path, tmp_path / "out", show_progress=False)
    embedder = Embedder.from_pretrained(tmp_path / "out", compile_cache_dir=False)
    try:
        assert embedder.model.source_format == "orbax"
        assert np.sum(embedder.embed(TEXTS) * reference, axis=1).min() >= 0.99999
    finally:
        embedder.close()
