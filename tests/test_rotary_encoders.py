"""Tiny random ModernBERT and NomicBERT vs transformers / sentence-transformers: hidden states,
pooled embeddings, packed rows, bf16, conversion (ModernBERT windows shorter than the inputs)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from jaxembed.api import Embedder
from jaxembed.weights.convert import convert
from jaxembed.weights.loader import load_model
from tests.helpers import save_tiny_modernbert, save_tiny_nomic_bert
from tests.texts import varied_texts

LENGTHS = [5, 30, 17, 1, 29]  # most longer than the 8-token sliding window


SAVERS = {"modernbert": save_tiny_modernbert, "nomic_bert": save_tiny_nomic_bert}


@pytest.fixture(scope="module", params=sorted(SAVERS))
def tiny(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(f"tiny-{request.param}")
    return SAVERS[request.param](path, seed=13), path


@pytest.fixture(scope="module")
def texts():
    return [t for t in varied_texts() if 3 < len(t.split()) < 40][:24]  # within 64 tokens


def _batch(seq: int = 32):
    rng = np.random.default_rng(0)
    ids = np.zeros((len(LENGTHS), seq), np.int32)
    mask = np.zeros_like(ids)
    for i, n in enumerate(LENGTHS):
        ids[i, :n] = rng.integers(5, 30000, n)
        mask[i, :n] = 1
    return ids, mask


def test_hidden_states_match_transformers(tiny):
    ref, path = tiny
    model = load_model(path, dtype="float32")
    if model.card.family == "modernbert":
        assert model.config.window == 5
        assert model.config.global_layers == (True, False, True, False)
    ids, mask = _batch()
    ours = np.asarray(model.module().apply({"params": model.params}, ids, mask))
    with torch.no_grad():
        want = ref(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask))
    real = mask.astype(bool)
    np.testing.assert_allclose(ours[real], want.last_hidden_state.numpy()[real], atol=1e-5, rtol=0)


@pytest.mark.parametrize("packing", [True, False])
def test_embeddings_match_sentence_transformers(tiny, texts, packing):
    from sentence_transformers import SentenceTransformer

    _, path = tiny
    reference = SentenceTransformer(str(path), device="cpu").encode(texts, batch_size=8)
    embedder = Embedder.from_pretrained(path, packing=packing, compile_cache_dir=False)
    try:
        assert embedder.packing is packing
        ours = embedder.embed(texts, truncate=True)
    finally:
        embedder.close()
    cos = np.sum(ours * reference, axis=1) / np.linalg.norm(reference, axis=1)
    assert cos.min() >= 0.99999, cos.min()


def test_bfloat16_and_conversion(tiny, texts, tmp_path):
    _, path = tiny
    full = Embedder.from_pretrained(path, compile_cache_dir=False)
    half = Embedder.from_pretrained(path, dtype="bfloat16", compile_cache_dir=False)
    convert(path, tmp_path / "out", show_progress=False)
    converted = Embedder.from_pretrained(tmp_path / "out", compile_cache_dir=False)
    try:
        want = full.embed(texts, truncate=True)
        assert np.sum(half.embed(texts, truncate=True) * want, axis=1).min() >= 0.999
        assert converted.model.source_format == "orbax"
        np.testing.assert_array_equal(converted.embed(texts, truncate=True), want)
    finally:
        for e in (full, half, converted):
            e.close()


def test_older_modernbert_config_spelling_reads_the_same(tmp_path):
    """`global_attn_every_n_layers` + `global_rope_theta`/`local_rope_theta` (older configs)
    and `layer_types` + `rope_parameters` (newer) describe the same model."""
    from jaxembed.models.modernbert import ModernBertConfig

    ref = save_tiny_modernbert(tmp_path)
    newer = ModernBertConfig.from_hf(ref.config.to_dict())
    older = {
        k: v for k, v in ref.config.to_dict().items() if k not in ("layer_types", "rope_parameters")
    }
    older.update(
        global_attn_every_n_layers=2, global_rope_theta=160_000.0, local_rope_theta=10_000.0
    )
    assert ModernBertConfig.from_hf(older) == newer


def test_plan_counts_modernbert_base_parameters():
    """gte-modernbert-base / ModernBERT-base (transformers' default config): `jaxembed plan`'s
    count from abstract shapes equals the transformers model's."""
    import transformers

    from jaxembed.families import model_family
    from jaxembed.parallel.plan import plan_parameters
    from jaxembed.registry import find_card

    card = find_card("gte-modernbert-base")  # ModernBERT-base: transformers' default config
    assert card.architecture == {
        k: v for k, v in transformers.ModernBertConfig().to_dict().items() if k in card.architecture
    }
    config = transformers.ModernBertConfig(**card.architecture)
    family, ours = model_family(card.architecture, card)
    counted = plan_parameters(family, ours, 1, 1, "float32").parameters
    with torch.device("meta"):
        reference = transformers.ModernBertModel(config)
    assert counted == sum(p.numel() for p in reference.parameters()) == 149_014_272


def test_nomic_original_config_spelling_reads_the_same():
    """nomic-embed-text's own config.json (GPT-2-style names, custom code) and transformers 5's."""
    import transformers

    from jaxembed.models.nomic_bert import NomicBertConfig

    newer = NomicBertConfig.from_hf(transformers.NomicBertConfig().to_dict())
    original = {
        "model_type": "nomic_bert",
        "vocab_size": 30528,
        "n_embd": 768,
        "n_head": 12,
        "n_layer": 12,
        "n_inner": 3072,
        "n_positions": 2048,
        "activation_function": "swiglu",
        "rotary_emb_base": 1000,
        "rotary_emb_fraction": 1.0,
        "rotary_emb_interleaved": False,
        "rotary_scaling_factor": None,
        "layer_norm_epsilon": 1e-12,
        "type_vocab_size": 2,
        "qkv_proj_bias": False,
        "mlp_fc1_bias": False,
        "mlp_fc2_bias": False,
        "prenorm": False,
    }
    assert NomicBertConfig.from_hf(original) == newer
    with pytest.raises(Exception, match="rotary_scaling_factor"):
        NomicBertConfig.from_hf({**original, "rotary_scaling_factor": 2})


def test_plan_counts_nomic_embed_text_v15_parameters():
    import transformers

    from jaxembed.families import model_family
    from jaxembed.parallel.plan import plan_parameters
    from jaxembed.registry import find_card

    card = find_card("nomic-embed-text-v1.5")  # transformers' default config is v1.5's
    config = transformers.NomicBertConfig(**card.architecture)
    assert config.to_dict() == transformers.NomicBertConfig().to_dict() | {"_name_or_path": ""}
    family, ours = model_family(card.architecture, card)
    counted = plan_parameters(family, ours, 1, 1, "float32").parameters
    with torch.device("meta"):
        reference = transformers.NomicBertModel(config)
    assert counted == sum(p.numel() for p in reference.parameters())
