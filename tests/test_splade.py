"""SPLADE sparse embeddings (BertForMaskedLM / DistilBertForMaskedLM + SpladePooling) vs the formula
on transformers' MLM logits and vs sentence-transformers' SparseEncoder; the chunked head; the
sparse form with pruning; bf16; conversion; the plan's parameter count."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from jaxembed.api import Embedder
from jaxembed.engine.service.sparse import SparseOptions, to_sparse
from jaxembed.models.sparse import SPARSE_HEAD_ELEMENTS, chunk_tokens
from jaxembed.weights.convert import convert
from tests.helpers import MINILM_DIR, save_tiny_splade
from tests.texts import varied_texts


@pytest.fixture(scope="module", params=["bert", "distilbert"])
def splade(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(f"tiny-splade-{request.param}")
    model, encoder = save_tiny_splade(path, seed=4, kind=request.param)
    embedder = Embedder.from_pretrained(path, compile_cache_dir=False)
    yield model, encoder, embedder, path
    embedder.close()


@pytest.fixture(scope="module")
def texts():
    return [t for t in varied_texts() if 3 < len(t.split()) < 40][:12]


def _formula(model, texts: list[str]) -> np.ndarray:
    """max over real tokens of log(1 + relu(MLM logits)), from transformers' logits."""
    import transformers

    tokenizer = transformers.BertTokenizerFast.from_pretrained(MINILM_DIR)
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    weights = torch.log1p(torch.relu(logits)) * batch["attention_mask"][..., None]
    return weights.max(dim=1).values.numpy()


def test_vectors_match_the_formula_and_sentence_transformers(splade, texts):
    model, encoder, embedder, _ = splade
    assert embedder.card.sparse and embedder.dimensions == 30522
    ours = embedder.embed(texts)
    want = _formula(model, texts)
    assert np.array_equal(ours > 0, want > 0)  # the same support
    np.testing.assert_allclose(ours, want, atol=1e-5, rtol=0)
    st = encoder.encode(texts, convert_to_tensor=True).to_dense().numpy()
    np.testing.assert_allclose(ours, st, atol=1e-5, rtol=0)
    assert 0 < (ours > 0).mean() < 1  # genuinely sparse (and not empty)


def test_pruning_keeps_the_same_support_as_the_reference(splade, texts):
    model, _, embedder, _ = splade
    ours, want = embedder.embed(texts), _formula(model, texts)
    options = SparseOptions(top_k=20, threshold=0.05)
    for mine, theirs in zip(to_sparse(ours, options), to_sparse(want, options), strict=True):
        assert mine.indices.tolist() == theirs.indices.tolist()
        assert len(mine.indices) <= 20 and (mine.values > 0.05).all()
        np.testing.assert_allclose(mine.values, theirs.values, atol=1e-5)
        assert list(mine.indices) == sorted(mine.indices)


def test_head_is_chunked_under_its_element_budget():
    assert chunk_tokens(32, 512, 30522) == 32  # 32 x 32 x 30522 < 2**25
    for batch, length in ((1, 8192), (64, 128), (256, 64), (4096, 8)):
        chunk = chunk_tokens(batch, length, 30522)
        assert length % chunk == 0
        assert batch * chunk * 30522 <= max(SPARSE_HEAD_ELEMENTS, batch * 30522)


def test_bfloat16_and_conversion(splade, texts, tmp_path):
    _, _, embedder, path = splade
    want = embedder.embed(texts)
    half = Embedder.from_pretrained(path, dtype="bfloat16", compile_cache_dir=False)
    convert(path, tmp_path / "out", show_progress=False)
    converted = Embedder.from_pretrained(tmp_path / "out", compile_cache_dir=False)
    try:
        got = half.embed(texts)
        cos = (
            np.sum(got * want, axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
        )
        assert cos.min() >= 0.999
        assert converted.card.sparse and converted.model.source_format == "orbax"
        np.testing.assert_array_equal(converted.embed(texts), want)
    finally:
        half.close()
        converted.close()


def test_plan_counts_a_splade_bert_base():
    """naver/splade-v3 is a bert-base BertForMaskedLM: the plan's count = transformers' with the
    decoder tied (its weight is the word embeddings)."""
    import transformers

    from jaxembed.families import model_family
    from jaxembed.parallel.plan import plan_parameters
    from jaxembed.registry import find_card

    card = find_card("splade-v3")
    family, ours = model_family(card.architecture, card)
    counted = plan_parameters(family, ours, 1, 1, "float32").parameters
    with torch.device("meta"):
        reference = transformers.BertForMaskedLM(transformers.BertConfig(**card.architecture))
    assert counted == sum(p.numel() for p in reference.parameters())  # tied: counted once
