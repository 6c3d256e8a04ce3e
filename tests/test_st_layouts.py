"""Model directories as sentence-transformers writes them: 6.x (the maximum length only in the
tokenizer's `model_max_length`, modules under new import paths) and the 2.x-5.x layout
(`sentence_bert_config.json`), each equal to `SentenceTransformer.encode` on short texts and
on texts longer than the saved maximum; a module jaxembed cannot run is a load error."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from jaxembed.api import Embedder
from jaxembed.card import card_from_model_dir
from jaxembed.errors import ModelLoadError
from tests.helpers import save_tiny_model
from tests.texts import long_passages

SAVED_MAX = 24


def _texts() -> list[str]:
    short = ["a dog barks", "hello there", "embeddings in one line"]
    long = long_passages(5, words=60)
    return short + long


@pytest.fixture(scope="module")
def st6_dir(tmp_path_factory):
    """A tiny BERT wrapped and saved by the installed sentence-transformers (6.x)."""
    from sentence_transformers import SentenceTransformer

    base = tmp_path_factory.mktemp("base")
    save_tiny_model("bert", base, seed=4)
    model = SentenceTransformer(str(base), device="cpu")
    model.max_seq_length = SAVED_MAX
    out = tmp_path_factory.mktemp("st6")
    model.save(str(out))
    return out


def _reference(path, texts) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(path), device="cpu").encode(texts)


def _ours(path, texts) -> np.ndarray:
    embedder = Embedder.from_pretrained(path, compile_cache_dir=False)
    try:
        return embedder.embed(texts, truncate=True)
    finally:
        embedder.close()


def test_st6_layout_keeps_the_saved_maximum_length(st6_dir):
    import sentence_transformers

    assert int(sentence_transformers.__version__.split(".")[0]) >= 6
    st_config = json.loads((st6_dir / "sentence_bert_config.json").read_text())
    assert "max_seq_length" not in st_config  # the layout this test is about
    modules = json.loads((st6_dir / "modules.json").read_text())
    assert any(m["type"].startswith("sentence_transformers.base.") for m in modules)
    hf_config = json.loads((st6_dir / "config.json").read_text())
    assert card_from_model_dir(st6_dir, hf_config).max_length == SAVED_MAX
    texts = _texts()
    ours, reference = _ours(st6_dir, texts), _reference(st6_dir, texts)
    assert np.sum(ours * reference, axis=1).min() >= 0.99999


def test_pre_6_layout_reads_sentence_bert_config(st6_dir, tmp_path):
    """The same model with the 2.x-5.x files: max_seq_length in sentence_bert_config.json
    and `sentence_transformers.models.*` module types (which 6.x still loads)."""
    old = tmp_path / "st5"
    shutil.copytree(st6_dir, old)
    (old / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": 16, "do_lower_case": False})
    )
    modules = json.loads((old / "modules.json").read_text())
    for m in modules:
        m["type"] = "sentence_transformers.models." + m["type"].rsplit(".", 1)[-1]
    (old / "modules.json").write_text(json.dumps(modules))
    hf_config = json.loads((old / "config.json").read_text())
    assert card_from_model_dir(old, hf_config).max_length == 16
    texts = _texts()
    ours, reference = _ours(old, texts), _reference(old, texts)
    assert np.sum(ours * reference, axis=1).min() >= 0.99999


def test_a_module_jaxembed_cannot_run_is_a_load_error(st6_dir, tmp_path):
    custom = tmp_path / "custom"
    shutil.copytree(st6_dir, custom)
    modules = json.loads((custom / "modules.json").read_text())
    modules.insert(2, {"idx": 9, "name": "9", "path": "9_X", "type": "my_pkg.Whitening"})
    (custom / "modules.json").write_text(json.dumps(modules))
    hf_config = json.loads((custom / "config.json").read_text())
    with pytest.raises(ModelLoadError, match=r"my_pkg\.Whitening"):
        card_from_model_dir(custom, hf_config)


@pytest.fixture(scope="module")
def prompted_dir(tmp_path_factory):
    """Saved by ST 6 with prompts, a default prompt and a dot-product similarity, and a
    Normalize module *before* a Dense one (Transformer, Pooling, Normalize, Dense)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Dense, Normalize, Pooling, Transformer

    base = tmp_path_factory.mktemp("base_prompted")
    save_tiny_model("bert", base, seed=5)
    transformer = Transformer(str(base))
    width = transformer.get_embedding_dimension()
    model = SentenceTransformer(
        modules=[transformer, Pooling(width, "mean"), Normalize(), Dense(width, 24)],
        device="cpu",
        prompts={"query": "query: ", "passage": "passage: ", "classification": "classify: "},
        default_prompt_name="classification",
        similarity_fn_name="dot",
    )
    out = tmp_path_factory.mktemp("st6_prompted")
    model.save(str(out))
    return out


def test_prompts_default_prompt_and_similarity_as_st_applies_them(prompted_dir):
    """No prompt → default_prompt_name; query → `encode_query`; document → `encode_document`
    (its "passage" prompt); a Normalize before a Dense normalises the Dense's input."""
    from sentence_transformers import SentenceTransformer

    hf_config = json.loads((prompted_dir / "config.json").read_text())
    card = card_from_model_dir(prompted_dir, hf_config)
    assert card.default_prompt_name == "classification" and card.similarity_fn_name == "dot"
    assert not card.normalize and card.projections[0]["normalize_input"]
    reference = SentenceTransformer(str(prompted_dir), device="cpu")
    texts = _texts()[:4]
    embedder = Embedder.from_pretrained(prompted_dir, compile_cache_dir=False)
    try:
        pairs = [
            (embedder.embed(texts, truncate=True), reference.encode(texts)),
            (
                embedder.embed(texts, truncate=True, prompt_name="query"),
                reference.encode_query(texts),
            ),
            (
                embedder.embed(texts, truncate=True, prompt_name="document"),
                reference.encode_document(texts),
            ),
        ]
    finally:
        embedder.close()
    for ours, want in pairs:
        cos = (
            np.sum(ours * want, axis=1)
            / np.linalg.norm(ours, axis=1)
            / np.linalg.norm(want, axis=1)
        )
        assert cos.min() >= 0.99999
        np.testing.assert_allclose(
            np.linalg.norm(ours, axis=1), np.linalg.norm(want, axis=1), rtol=1e-4
        )
    assert not np.allclose(pairs[0][0], pairs[1][0])  # the prompts made a difference
