"""Tiny random Mistral / Qwen2 / Qwen3 decoders vs transformers: hidden states, last-token embeddings."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
import torch

from jaxembed.api import Embedder
from jaxembed.card import ModelCard
from jaxembed.families import get_family
from jaxembed.models.decoder import DecoderConfig
from jaxembed.pooling import l2_normalize, pool
from jaxembed.weights.loader import load_model
from tests.helpers import DECODER_EOS, QUERY_PROMPT, save_tiny_decoder

FAMILIES = ["mistral", "qwen2", "qwen3"]
LENGTHS = [5, 40, 17, 1, 29]  # several longer than Mistral's 8-token window


@pytest.fixture(scope="module", params=FAMILIES)
def tiny(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param)
    return request.param, save_tiny_decoder(request.param, out, seed=11), out


def _batch(padding: str, seq: int = 48):
    rng = np.random.default_rng(0)
    ids = np.zeros((len(LENGTHS), seq), np.int32)
    mask = np.zeros_like(ids)
    for i, n in enumerate(LENGTHS):
        row = slice(0, n) if padding == "right" else slice(seq - n, seq)
        ids[i, row] = rng.integers(5, 30000, n)
        mask[i, row] = 1
    return ids, mask


def _reference_hidden(ref, ids, mask):
    with torch.no_grad():
        out = ref(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask))
    return out.last_hidden_state.float().numpy()


@pytest.mark.parametrize("padding", ["right", "left"])
def test_hidden_states_match_float32(tiny, padding):
    _, ref, path = tiny
    model = load_model(path, dtype="float32")
    ids, mask = _batch(padding)
    ours = np.asarray(model.module().apply({"params": model.params}, ids, mask))
    real = mask.astype(bool)
    np.testing.assert_allclose(
        ours[real], _reference_hidden(ref, ids, mask)[real], atol=1e-4, rtol=0
    )


@pytest.mark.parametrize("padding", ["right", "left"])
@pytest.mark.parametrize("dtype, bound", [("float32", 0.99999), ("bfloat16", 0.999)])
def test_last_token_embeddings_match(tiny, padding, dtype, bound):
    _, ref, path = tiny
    model = load_model(path, dtype=dtype)
    ids, mask = _batch(padding)
    hidden = model.module().apply({"params": model.params}, ids, mask)
    ours = np.asarray(l2_normalize(pool(hidden, mask, "last_token")))
    theirs = _reference_hidden(ref.float(), ids, mask)
    last = [np.flatnonzero(m)[-1] for m in mask]
    theirs = np.stack([theirs[i, j] for i, j in enumerate(last)])
    theirs /= np.linalg.norm(theirs, axis=1, keepdims=True)
    assert ours.dtype == np.float32
    assert (ours * theirs).sum(1).min() >= bound


def test_embedder_appends_eos_and_matches_reference(tiny):
    _, ref, path = tiny
    embedder = Embedder(load_model(path, dtype="float32"))
    card = embedder.card
    assert (card.pooling, card.normalize, card.append_eos, card.dtype) == (
        "last_token",
        True,
        True,
        "bfloat16",
    )
    texts = ["a short one", "a somewhat longer text that crosses the sliding window for sure", "x"]
    tokens = embedder.tokenize(texts)
    assert all(t[-1] == DECODER_EOS for t in tokens)
    ours = embedder.embed(texts)
    for i, t in enumerate(tokens):
        h = _reference_hidden(ref, t[None], np.ones((1, len(t)), np.int32))[0, -1]
        assert float(ours[i] @ (h / np.linalg.norm(h))) >= 0.99999


def test_truncation_keeps_a_slot_for_eos(tiny):
    _, _, path = tiny
    embedder = Embedder(load_model(path, dtype="float32"))
    ids = embedder.tokenize(["word " * 200], truncate=True)[0]
    assert len(ids) == embedder.max_length == 64 and ids[-1] == DECODER_EOS


def test_batch_invariance(tiny):
    _, _, path = tiny
    embedder = Embedder(load_model(path, dtype="float32"))
    target = "batch invariance for decoders"
    others = [f"filler text number {i} " * (1 + i % 9) for i in range(40)]
    alone = embedder.embed([target])[0]
    mixed = embedder.embed([*others[:20], target, *others[20:]], truncate=True)[20]
    coarse = Embedder(
        embedder.model, seq_lengths=(64,), batch_sizes=(32,), token_budget=4096
    ).embed([target])[0]
    assert np.abs(alone - mixed).max() <= 1e-6 and np.abs(alone - coarse).max() <= 1e-6


def test_causal_and_bidirectional(tmp_path):
    save_tiny_decoder("qwen2", tmp_path, seed=12)
    causal = load_model(tmp_path, dtype="float32")
    bidir_card = causal.card.replace(causal=False)
    bidir_card.save(tmp_path / "card.json")
    bidir = load_model(tmp_path, dtype="float32")
    assert bidir.config.causal is False
    ids = np.array([[10, 20, 30, 40], [10, 20, 30, 99]], np.int32)
    mask = np.ones_like(ids)
    hc = np.asarray(causal.module().apply({"params": causal.params}, ids, mask))
    hb = np.asarray(bidir.module().apply({"params": bidir.params}, ids, mask))
    np.testing.assert_allclose(hc[0, :3], hc[1, :3], atol=1e-6)  # the future cannot leak back
    assert np.abs(hb[0, :3] - hb[1, :3]).max() > 1e-3  # bidirectional sees the last token


def test_instructions_and_prompts(tmp_path):
    save_tiny_decoder("mistral", tmp_path, seed=13)
    base = load_model(tmp_path)
    card = base.card.replace(instruction_template="Instruct: {instruction}\nQuery: ")
    card.save(tmp_path / "card.json")
    embedder = Embedder(load_model(tmp_path, dtype="float32"))
    q = "what is the capital of France?"
    as_query = embedder.embed([q], prompt_name="query")
    np.testing.assert_array_equal(as_query, embedder.embed([QUERY_PROMPT + q]))
    np.testing.assert_array_equal(embedder.embed([q], prompt_name="document"), embedder.embed([q]))
    custom = embedder.embed([q], instruction="Retrieve Wikipedia passages")
    np.testing.assert_array_equal(
        custom, embedder.embed(["Instruct: Retrieve Wikipedia passages\nQuery: " + q])
    )
    assert float(as_query[0] @ custom[0]) < 0.9999


def test_sharded_decoder_checkpoint(tmp_path):
    save_tiny_decoder("qwen3", tmp_path / "single", seed=14)
    save_tiny_decoder("qwen3", tmp_path / "sharded", seed=14, max_shard_size="1MB")
    assert json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())[
        "weight_map"
    ]
    a, b = load_model(tmp_path / "single"), load_model(tmp_path / "sharded")
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


E5_MISTRAL_CONFIG = {  # intfloat/e5-mistral-7b-instruct config.json (architecture fields)
    "model_type": "mistral",
    "vocab_size": 32000,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "max_position_embeddings": 32768,
    "sliding_window": 4096,
    "hidden_act": "silu",
    "eos_token_id": 2,
    "pad_token_id": 2,
}


def test_7b_parameter_count_and_memory_from_abstract_shapes():
    from jaxembed.parallel.plan import plan_parameters

    config = DecoderConfig.from_hf(E5_MISTRAL_CONFIG)
    family = get_family("mistral")
    plan = plan_parameters(family, config, data=1, model=8, dtype="bfloat16")  # no allocation
    assert plan.parameters == 7_110_660_096  # MistralModel without lm_head
    assert plan.total_bytes == 2 * 7_110_660_096
    assert plan_parameters(family, config, 1, 1, "float32").per_device_bytes == 4 * 7_110_660_096
    # Tensor parallel over 8 devices: every layer weight splits (heads, kv heads, mlp), the
    # embedding table splits over the vocabulary; only norms stay replicated.
    assert plan.replicated_parameters == 33 * 4096 * 2 - 4096  # 2 norms x 32 layers + final
    assert 2 * 7_110_660_096 / 8 < plan.per_device_bytes < 2 * 7_110_660_096 / 8 * 1.001


def test_shipped_decoder_cards():
    from jaxembed.registry import registry_cards

    cards = registry_cards()
    for name in ("e5-mistral-7b-instruct", "gte-qwen2-1.5b-instruct", "qwen3-embedding-0.6b"):
        card = cards[name]
        assert card.pooling == "last_token" and card.normalize and card.dtype == "bfloat16"
        assert "{instruction}" in card.instruction_template
        assert "query" in card.prompts
    assert cards["gte-qwen2-1.5b-instruct"].causal is False
    assert cards["qwen3-embedding-0.6b"].matryoshka_dims
    assert isinstance(cards["e5-mistral-7b-instruct"], ModelCard)


@pytest.mark.parametrize(
    "config, count",
    [
        (
            {
                "model_type": "qwen2",
                "vocab_size": 151646,
                "hidden_size": 1536,
                "intermediate_size": 8960,
                "num_hidden_layers": 28,
                "num_attention_heads": 12,
                "num_key_value_heads": 2,
            },
            1_543_268_864,
        ),
        (
            {
                "model_type": "qwen3",
                "vocab_size": 151669,
                "hidden_size": 1024,
                "intermediate_size": 3072,
                "num_hidden_layers": 28,
                "num_attention_heads": 16,
                "num_key_value_heads": 8,
                "head_dim": 128,
            },
            595_776_512,
        ),
    ],
)
def test_qwen_parameter_counts(config, count):
    from jaxembed.parallel.plan import plan_parameters

    family = get_family(config["model_type"])
    plan = plan_parameters(family, DecoderConfig.from_hf(config), 1, 1, "bfloat16")
    assert plan.parameters == count  # gte-Qwen2-1.5B, Qwen3-Embedding-0.6B
