"""Rerankers vs their references: tiny random cross-encoders vs sentence-transformers'
CrossEncoder (and transformers' logits), a tiny Qwen3ForCausalLM scored with Qwen3-Reranker's
published recipe; packed = unpacked, bf16, truncation, conversion, cards."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from jaxembed.api import Embedder, Reranker
from jaxembed.card import QWEN3_RERANKER_TEMPLATE as TEMPLATE
from jaxembed.errors import InvalidInputError
from jaxembed.weights.convert import convert
from jaxembed.weights.loader import load_model
from tests.helpers import save_tiny_cross_encoder, save_tiny_qwen3_reranker

PAIRS = [
    ("what is a dog", "a dog is an animal that barks at the mailman"),
    ("what is a dog", "cats purr"),
    ("how do planes fly", "lift comes from the pressure difference over the wing"),
    ("how do planes fly", "the stock market fell on tuesday after the announcement"),
    ("jax", "jax is a library for composable transformations of numpy programs"),
]
LONG_DOCUMENT = "the quick brown fox jumps over the lazy dog " * 40  # > 128 tokens

CROSS_ENCODERS = [("bert", 1), ("xlm-roberta", 1), ("xlm-roberta", 3)]


@pytest.fixture(scope="module", params=CROSS_ENCODERS, ids=lambda p: f"{p[0]}-{p[1]}")
def cross_encoder(request, tmp_path_factory):
    family, labels = request.param
    path = tmp_path_factory.mktemp(f"ce-{family}-{labels}")
    save_tiny_cross_encoder(family, path, num_labels=labels, seed=3)
    from sentence_transformers import CrossEncoder

    reference = CrossEncoder(str(path), device="cpu")
    reranker = Reranker.from_pretrained(path, compile_cache_dir=False)
    yield path, labels, reference, reranker
    reranker.close()


def _st_scores(reference, pairs, labels, raw=False):
    if raw:
        return reference.predict(pairs, activation_fn=torch.nn.Identity())
    return reference.predict(pairs, apply_softmax=labels > 1)


def test_cross_encoder_matches_sentence_transformers(cross_encoder):
    _, labels, reference, reranker = cross_encoder
    ours = reranker.predict(PAIRS)
    assert ours.shape == ((len(PAIRS),) if labels == 1 else (len(PAIRS), labels))
    np.testing.assert_allclose(ours, _st_scores(reference, PAIRS, labels), atol=1e-5, rtol=0)
    # The logits vary with the pair, so the comparison is not between constants.
    assert np.ptp(reranker.predict(PAIRS, raw=True), axis=0).max() > 0.05


def test_raw_scores_are_transformers_logits(cross_encoder):
    _, labels, reference, reranker = cross_encoder
    raw = reranker.predict(PAIRS, raw=True)
    np.testing.assert_allclose(raw, _st_scores(reference, PAIRS, labels, raw=True), atol=1e-5)


def test_long_documents_are_cut_from_the_document_side(cross_encoder):
    """CrossEncoder truncates `longest_first`: with a short query only the document is cut,
    which is what jaxembed does; without truncation the pair is refused."""
    _, labels, reference, reranker = cross_encoder
    pairs = [("what is a fox", LONG_DOCUMENT), PAIRS[0]]
    np.testing.assert_allclose(
        reranker.predict(pairs), _st_scores(reference, pairs, labels), atol=1e-5, rtol=0
    )
    with pytest.raises(InvalidInputError, match=r"documents\[0\].*truncate"):
        reranker.predict(pairs, truncate=False)


def test_packed_and_unpacked_rows_score_the_same(cross_encoder):
    path, _, _, reranker = cross_encoder
    assert reranker.engine.packing
    unpacked = Reranker(Embedder(load_model(path), packing=False))
    try:
        np.testing.assert_allclose(unpacked.predict(PAIRS), reranker.predict(PAIRS), atol=1e-6)
    finally:
        unpacked.close()


def test_rank_orders_by_score(cross_encoder):
    _, labels, _, reranker = cross_encoder
    documents = [d for _, d in PAIRS]
    if labels > 1:
        with pytest.raises(InvalidInputError, match="labels"):
            reranker.rank("what is a dog", documents)
        return
    scores = reranker.score("what is a dog", documents)
    ranked = reranker.rank("what is a dog", documents, top_n=3, return_documents=True)
    assert [r["index"] for r in ranked] == list(np.argsort(-scores, kind="stable")[:3])
    assert all(r["document"] == documents[r["index"]] for r in ranked)


def test_bfloat16_within_a_hundredth(tmp_path):
    save_tiny_cross_encoder("bert", tmp_path, seed=5)
    full = Reranker.from_pretrained(tmp_path, compile_cache_dir=False)
    half = Reranker.from_pretrained(tmp_path, dtype="bfloat16", compile_cache_dir=False)
    try:
        np.testing.assert_allclose(half.predict(PAIRS), full.predict(PAIRS), atol=1e-2)
    finally:
        full.close()
        half.close()


def test_card_and_conversion(tmp_path):
    src = tmp_path / "src"
    save_tiny_cross_encoder("bert", src, seed=7)
    (src / "config_sentence_transformers.json").write_text(
        json.dumps({"model_type": "CrossEncoder", "activation_fn": "torch.nn.modules.Identity"})
    )
    direct = Reranker.from_pretrained(src, compile_cache_dir=False)
    assert (direct.card.kind, direct.card.pooling, direct.card.score_activation) == (
        "reranker",
        "cls",
        "identity",
    )
    convert(src, tmp_path / "out", show_progress=False)
    converted = Reranker.from_pretrained(tmp_path / "out", compile_cache_dir=False)
    try:
        assert converted.engine.model.source_format == "orbax"
        np.testing.assert_array_equal(converted.predict(PAIRS), direct.predict(PAIRS))
        np.testing.assert_allclose(  # identity activation: the scores are the logits
            direct.predict(PAIRS), direct.predict(PAIRS, raw=True), atol=0
        )
    finally:
        direct.close()
        converted.close()


# -- Qwen3-Reranker: yes/no logits of a causal LM --------------------------------------------


def _qwen3_reference(model, tokenizer, pairs, instruction, max_length=None):
    """Qwen3-Reranker's published usage code: prefix + formatted body + suffix tokens,
    the body truncated to fit, score = softmax over (no, yes) logits at the last position."""
    yes, no = tokenizer.convert_tokens_to_ids("yes"), tokenizer.convert_tokens_to_ids("no")
    prefix = tokenizer.encode(TEMPLATE["prefix"], add_special_tokens=False)
    suffix = tokenizer.encode(TEMPLATE["suffix"], add_special_tokens=False)
    scores = []
    for query, document in pairs:
        body = f"<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {document}"
        ids = tokenizer.encode(body, add_special_tokens=False)
        if max_length is not None:
            ids = ids[: max_length - len(prefix) - len(suffix)]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prefix + ids + suffix])).logits[0, -1]
        pair = torch.stack([logits[no], logits[yes]]).log_softmax(-1).exp()
        scores.append(pair[1].item())
    return np.asarray(scores)


@pytest.fixture(scope="module", params=[False, True], ids=["untied", "tied"])
def qwen3(request, tmp_path_factory):
    from transformers import PreTrainedTokenizerFast

    path = tmp_path_factory.mktemp("data") / "tiny-qwen3-reranker"
    model = save_tiny_qwen3_reranker(path, seed=4, tied=request.param)
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(path / "tokenizer.json"))
    return path, model, tokenizer


def test_qwen3_reranker_matches_its_published_recipe(qwen3):
    path, model, tokenizer = qwen3
    reranker = Reranker.from_pretrained(path, dtype="float32", compile_cache_dir=False)
    try:
        card = reranker.card
        assert (card.kind, card.pooling, card.score_tokens) == (
            "reranker",
            "last_token",
            ("yes", "no"),
        )
        default = _qwen3_reference(model, tokenizer, PAIRS, TEMPLATE["instruction"])
        np.testing.assert_allclose(reranker.predict(PAIRS), default, atol=1e-5, rtol=0)
        custom = _qwen3_reference(model, tokenizer, PAIRS[:2], "Find answers about pets")
        ours = reranker.predict(PAIRS[:2], instruction="Find answers about pets")
        np.testing.assert_allclose(ours, custom, atol=1e-5, rtol=0)
        # An over-long document is cut at its end, as the recipe truncates the body.
        long_pairs = [("what is a fox", LONG_DOCUMENT * 2)]
        reference = _qwen3_reference(
            model, tokenizer, long_pairs, TEMPLATE["instruction"], card.max_length
        )
        np.testing.assert_allclose(reranker.predict(long_pairs), reference, atol=1e-5)
    finally:
        reranker.close()


def test_qwen3_reranker_bfloat16(qwen3):
    path, model, tokenizer = qwen3
    reranker = Reranker.from_pretrained(path, dtype="bfloat16", compile_cache_dir=False)
    try:
        reference = _qwen3_reference(model, tokenizer, PAIRS, TEMPLATE["instruction"])
        np.testing.assert_allclose(reranker.predict(PAIRS), reference, atol=1e-2)
    finally:
        reranker.close()


def test_plan_counts_match_transformers_for_shipped_reranker_cards():
    """`jaxembed plan`'s parameter count of each shipped reranker card equals the count of
    the transformers model its architecture describes (built on the meta device)."""
    import transformers

    from jaxembed.families import model_family
    from jaxembed.parallel.plan import plan_parameters
    from jaxembed.registry import registry_cards

    cards = [c for c in registry_cards().values() if c.kind == "reranker"]
    assert len(cards) >= 3
    for card in cards:
        arch = dict(card.architecture)
        family, config = model_family(arch, card)
        ours = plan_parameters(family, config, 1, 1, card.dtype).parameters
        hf_config = transformers.AutoConfig.for_model(**arch)
        with torch.device("meta"):
            if card.score_tokens:
                reference = transformers.AutoModelForCausalLM.from_config(hf_config)
            else:
                reference = transformers.AutoModelForSequenceClassification.from_config(hf_config)
        counted = sum(p.numel() for n, p in reference.named_parameters() if "lm_head" not in n)
        if card.score_tokens:  # only the yes/no rows of the LM head are kept
            counted += 2 * hf_config.hidden_size
        assert ours == counted, card.name


def test_shipped_qwen3_reranker_card_uses_the_published_template():
    from jaxembed.registry import find_card

    card = find_card("Qwen/Qwen3-Reranker-0.6B")
    assert card.pair_template == TEMPLATE and card.score_tokens == ("yes", "no")


def test_qwen3_reranker_converts(qwen3, tmp_path):
    path, _, _ = qwen3
    convert(path, tmp_path / "out", dtype="float32", show_progress=False)  # the card says bf16
    direct = Reranker.from_pretrained(path, dtype="float32", compile_cache_dir=False)
    converted = Reranker.from_pretrained(tmp_path / "out", dtype="float32", compile_cache_dir=False)
    try:
        assert converted.card.pair_template == TEMPLATE
        np.testing.assert_array_equal(converted.predict(PAIRS[:2]), direct.predict(PAIRS[:2]))
    finally:
        direct.close()
        converted.close()
