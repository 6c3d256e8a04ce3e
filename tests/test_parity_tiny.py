"""Tiny random BERT / RoBERTa / XLM-R built with transformers: hidden states and every pooling mode."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from jaxembed.api import Embedder
from jaxembed.weights.loader import load_model
from tests.helpers import save_tiny_model

FAMILIES = ["bert", "roberta", "xlm-roberta"]
POOLINGS = ["cls", "mean", "max", "last_token", "mean_sqrt_len"]
TEXTS = [
    "short",
    "a somewhat longer sentence with several more tokens in it",
    "tiny random models still have to agree with the reference exactly",
    "x y z",
    "The cat sits on the mat. " * 4,
]


@pytest.mark.parametrize("family", FAMILIES)
def test_last_hidden_states_match(tmp_path, family):
    ref = save_tiny_model(family, tmp_path, seed=1)
    model = load_model(tmp_path)
    rng = np.random.default_rng(0)
    lengths = [3, 17, 40, 64, 9]
    ids = np.zeros((len(lengths), 64), np.int32)
    mask = np.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, :n] = rng.integers(2, 30522, n)
        mask[i, :n] = 1
    if family != "bert":
        ids[1, 5] = 1  # a pad id inside a real row: positions must follow HF's rule
    ours = np.asarray(model.module().apply({"params": model.params}, ids, mask))
    with torch.no_grad():
        theirs = ref(
            input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask)
        ).last_hidden_state.numpy()
    real = mask.astype(bool)
    np.testing.assert_allclose(ours[real], theirs[real], atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("pooling", POOLINGS)
def test_pooled_embeddings_match_sentence_transformers(tmp_path, family, pooling):
    from sentence_transformers import SentenceTransformer

    save_tiny_model(family, tmp_path, seed=2, pooling=pooling, normalize=pooling != "max")
    embedder = Embedder(load_model(tmp_path))
    assert embedder.card.pooling == pooling
    ours = embedder.embed(TEXTS)
    theirs = SentenceTransformer(str(tmp_path), device="cpu").encode(TEXTS, convert_to_numpy=True)
    cos = (ours * theirs).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(theirs, axis=1)
    assert cos.min() >= 0.99999
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_sharded_checkpoint_loads_like_single_file(tmp_path):
    save_tiny_model("bert", tmp_path / "single", seed=3)
    save_tiny_model("bert", tmp_path / "sharded", seed=3, max_shard_size="300KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    a, b = load_model(tmp_path / "single"), load_model(tmp_path / "sharded")
    for x, y in zip(*(jax_leaves(m.params) for m in (a, b)), strict=True):
        np.testing.assert_array_equal(x, y)


def test_wrapped_checkpoint_with_task_head_loads(tmp_path):
    """BertForMaskedLM stores `bert.`-prefixed tensors plus an MLM head we ignore."""
    ref = save_tiny_model("bert", tmp_path, seed=4, head="mlm")
    model = load_model(tmp_path)
    ids = np.array([[101, 2000, 3000, 102]], np.int32)
    ours = np.asarray(model.module().apply({"params": model.params}, ids, np.ones_like(ids)))
    with torch.no_grad():
        theirs = ref.bert(input_ids=torch.tensor(ids, dtype=torch.long)).last_hidden_state.numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def jax_leaves(tree):
    import jax

    return [np.asarray(x) for x in jax.tree.leaves(tree)]
