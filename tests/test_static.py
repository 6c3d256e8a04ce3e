"""Static embedding models (sentence-transformers' StaticEmbedding) as the installed
sentence-transformers saves them (6.x: the table at the root) and as 3.x did (under
`0_StaticEmbedding/`), each equal to `SentenceTransformer.encode`: the text's own tokens
(no special tokens), the saved tokenizer's truncation, prompts, Normalize and Dense."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from jaxembed.api import Embedder
from jaxembed.card import card_from_model_dir
from jaxembed.errors import AdapterError
from jaxembed.registry import read_hf_config, resolve_model
from jaxembed.static_layout import STATIC_MAX_LENGTH
from tests.helpers import MINILM_DIR
from tests.texts import long_passages


def _texts() -> list[str]:
    return ["a dog barks", "Hello there, General Kenobi!", "x", *long_passages(4, words=220)]


def _save_static(out, *, width=48, normalize=True, dense=0, truncation=True, seed=3, **kw):
    """A StaticEmbedding on MiniLM's tokenizer (whose tokenizer.json truncates at 128) with
    random rows, saved by the installed sentence-transformers."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize, StaticEmbedding
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(MINILM_DIR / "tokenizer.json"))
    if not truncation:
        tokenizer.no_truncation()
    torch.manual_seed(seed)
    table = torch.randn(tokenizer.get_vocab_size(), width)
    modules = [StaticEmbedding(tokenizer, embedding_weights=table)]
    if dense:
        modules.append(Dense(width, dense))
    if normalize:
        modules.append(Normalize())
    SentenceTransformer(modules=modules, device="cpu", **kw).save(str(out))
    return out


@pytest.fixture(scope="module")
def static_dir(tmp_path_factory):
    return _save_static(
        tmp_path_factory.mktemp("static6"),
        prompts={"query": "query: ", "document": "passage: "},
    )


def _reference(path, texts, **kw) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(path), device="cpu").encode(texts, **kw)


def _assert_equal(ours, want):
    cos = np.sum(ours * want, 1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(want, axis=1)
    assert cos.min() >= 0.99999, cos
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), np.linalg.norm(want, axis=1), 1e-4)


def test_st6_static_model_equals_encode_with_truncation_and_prompts(static_dir):
    card = card_from_model_dir(static_dir, read_hf_config(static_dir))
    assert card.family == "static_embedding" and not card.special_tokens
    assert card.max_length == 128 and card.normalize and card.dimensions == 48
    texts = _texts()
    embedder = Embedder.from_pretrained(static_dir, compile_cache_dir=False)
    try:
        # The long passages pass 128 tokens: ST's tokenizer cuts them there, as `truncate` does.
        assert max(len(t) for t in embedder.tokenizer.raw_ids(texts)) > 128
        _assert_equal(embedder.embed(texts, truncate=True), _reference(static_dir, texts))
        _assert_equal(
            embedder.embed(texts, truncate=True, prompt_name="query"),
            _reference(static_dir, texts, prompt_name="query"),
        )
        # Matryoshka widths (static-retrieval-mrl-en-v1 is trained for them): ST's truncate_dim.
        from sentence_transformers import SentenceTransformer

        # (ST cuts its normalised vectors; jaxembed normalises the cut ones again, as the
        # OpenAI API's `dimensions` does: the same directions.)
        short = SentenceTransformer(str(static_dir), device="cpu", truncate_dim=16)
        want = short.encode(texts)
        _assert_equal(
            embedder.embed(texts, truncate=True, dimensions=16),
            want / np.linalg.norm(want, axis=1, keepdims=True),
        )
        # No [CLS]/[SEP]: a text's ids are its own tokens.
        assert embedder.tokenizer.encode(["hello world"])[0].tolist() == [7592, 2088]
        with pytest.raises(AdapterError, match="not supported"):
            embedder.enable_lora()
    finally:
        embedder.close()


def test_st3_layout_without_truncation_embeds_whole_texts(tmp_path):
    """3.x kept the module in `0_StaticEmbedding/` under `sentence_transformers.models.*`;
    a tokenizer that does not truncate embeds every token, as ST does (up to 8,192)."""
    saved = _save_static(tmp_path / "new", normalize=False, truncation=False, seed=7)
    old = tmp_path / "static3"
    (old / "0_StaticEmbedding").mkdir(parents=True)
    for name in ("model.safetensors", "tokenizer.json"):
        shutil.move(saved / name, old / "0_StaticEmbedding" / name)
    shutil.copy(saved / "config_sentence_transformers.json", old)
    (old / "modules.json").write_text(
        json.dumps(
            [
                {
                    "idx": 0,
                    "name": "0",
                    "path": "0_StaticEmbedding",
                    "type": "sentence_transformers.models.StaticEmbedding",
                }
            ]
        )
    )
    weights_dir, card = resolve_model(old)
    assert weights_dir == old / "0_StaticEmbedding" and card.max_length == STATIC_MAX_LENGTH
    assert not card.normalize
    texts = _texts()
    ours = Embedder.from_pretrained(old, compile_cache_dir=False, seq_lengths=[16, 64, 512])
    try:
        _assert_equal(ours.embed(texts), _reference(old, texts))
    finally:
        ours.close()


def test_dense_after_static_and_convert_round_trip(tmp_path):
    from jaxembed.weights.convert import convert

    saved = _save_static(tmp_path / "dense", dense=24, seed=11)
    texts = _texts()[:4]
    want = _reference(saved, texts, convert_to_numpy=True)
    converted = convert(saved, tmp_path / "converted", show_progress=False).out_dir
    for path in (saved, converted):
        embedder = Embedder.from_pretrained(path, compile_cache_dir=False)
        try:
            assert embedder.card.dimensions == 24
            _assert_equal(embedder.embed(texts, truncate=True), want)
        finally:
            embedder.close()
