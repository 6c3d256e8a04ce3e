"""LoRA adapters against `peft` (the torch reference), mixed-adapter batches, and bad adapters."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jaxembed.api import Embedder
from jaxembed.errors import OverloadedError
from jaxembed.lora import AdapterError
from tests.helpers import save_tiny_decoder, save_tiny_model
from tests.texts import varied_texts


def _peft_adapter(base_dir, out_dir, targets, *, seed, rank=4, alpha=8, rslora=False):
    """A random (non-zero B) PEFT adapter on the saved HF model; returns the peft model."""
    import peft
    import torch
    import transformers

    torch.manual_seed(seed)
    model = transformers.AutoModel.from_pretrained(base_dir).eval()
    config = peft.LoraConfig(
        r=rank, lora_alpha=alpha, target_modules=targets, init_lora_weights=False,
        use_rslora=rslora,
    )  # fmt: skip
    peft_model = peft.get_peft_model(model, config).eval()
    peft_model.save_pretrained(out_dir)
    return peft_model


def _reference(model, embedder, texts, pooling):
    """The torch model's embeddings of `texts`, pooled and normalised like the card says."""
    import torch

    out = []
    for tokens in embedder.tokenize(texts):
        ids = torch.tensor(np.asarray(tokens)[None], dtype=torch.long)
        with torch.no_grad():
            hidden = model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state[0]
        vec = hidden.mean(0) if pooling == "mean" else hidden[-1]
        out.append((vec / vec.norm()).numpy())
    return np.stack(out)


def _cosines(a, b):
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    base = tmp_path_factory.mktemp("lora-bert")
    save_tiny_model("bert", base, seed=5)
    adapters = {}
    for i, targets in enumerate(
        (["query", "value"], ["query", "key", "value", "dense"], ["intermediate.dense"])
    ):
        path = tmp_path_factory.mktemp(f"bert-adapter-{i}")
        adapters[f"a{i}"] = (path, _peft_adapter(base, path, targets, seed=100 + i, rank=2 + i))
    embedder = Embedder.from_pretrained(base, dtype="float32", compile_cache_dir=False)
    embedder.enable_lora(max_loras=3, max_rank=8)
    return base, adapters, embedder


def test_bert_adapter_matches_peft_unmerged_and_merged(bert):
    _, adapters, embedder = bert
    texts = varied_texts()[:12]
    for name, (path, peft_model) in adapters.items():
        embedder.adapter_slot(name, path)  # load and keep resident
        ours = embedder.embed(texts, adapter=name, truncate=True)
        unmerged = _reference(peft_model, embedder, texts, "mean")
        assert _cosines(ours, unmerged).min() >= 0.99999, name
        merged = _reference(peft_model.merge_and_unload(), embedder, texts, "mean")
        assert _cosines(ours, merged).min() >= 0.99999, name
        # The adapter changed the vectors (B is random, not peft's zero init).
        assert _cosines(ours, embedder.embed(texts, truncate=True)).min() < 0.999


def test_one_batch_of_base_and_three_adapters_is_batch_invariant(bert):
    _, adapters, embedder = bert
    texts = varied_texts()[20:36]
    tokens = embedder.tokenize(texts, truncate=True)
    slots = [0] + [embedder.adapter_slot(name, path) for name, (path, _) in adapters.items()]
    row_slots = [slots[i % 4] for i in range(len(texts))]
    together = embedder.embed_token_lists(tokens, row_slots)
    for slot in slots:
        rows = [i for i, s in enumerate(row_slots) if s == slot]
        alone = embedder.embed_token_lists([tokens[i] for i in rows], [slot] * len(rows))
        assert np.abs(together[rows] - alone).max() <= 1e-6
    # The mixed call ran as shared batches: no more device batches than base rows alone need.
    calls = []
    run = embedder.runner.run
    embedder.runner.run = lambda *a: calls.append(a) or run(*a)
    try:
        embedder.embed_token_lists(tokens, row_slots)
        mixed_batches = len(calls)
        calls.clear()
        embedder.embed_token_lists(tokens)
    finally:
        embedder.runner.run = run
    assert mixed_batches == len(calls)


def test_decoder_adapter_with_rslora_matches_peft(tmp_path):
    base = tmp_path / "qwen3"
    save_tiny_decoder("qwen3", base, seed=9)
    path = tmp_path / "adapter"
    peft_model = _peft_adapter(
        base, path, ["q_proj", "v_proj", "o_proj", "gate_proj", "down_proj"], seed=7, rslora=True
    )
    embedder = Embedder.from_pretrained(base, dtype="float32", compile_cache_dir=False)
    embedder.enable_lora(max_loras=2, max_rank=16)
    embedder.adapter_slot("q", path)
    texts = varied_texts()[:8]
    ours = embedder.embed(texts, adapter="q", truncate=True)
    assert _cosines(ours, _reference(peft_model, embedder, texts, "last")).min() >= 0.99999
    merged = peft_model.merge_and_unload()
    assert _cosines(ours, _reference(merged, embedder, texts, "last")).min() >= 0.99999


def test_bad_adapters_are_refused_clearly(bert, tmp_path):
    _, adapters, embedder = bert
    good = adapters["a0"][0]

    def variant(name, **changes):
        target = tmp_path / name
        target.mkdir()
        config = json.loads((good / "adapter_config.json").read_text()) | changes
        (target / "adapter_config.json").write_text(json.dumps(config))
        (target / "adapter_model.safetensors").write_bytes(
            (good / "adapter_model.safetensors").read_bytes()
        )
        return target

    with pytest.raises(AdapterError, match="above the maximum"):
        embedder.adapter_slot("big", variant("big", r=64))
    with pytest.raises(AdapterError, match="DoRA"):
        embedder.adapter_slot("dora", variant("dora", use_dora=True))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text("{not json")
    (broken / "adapter_model.safetensors").write_bytes(b"garbage")
    with pytest.raises(AdapterError, match="not valid JSON"):
        embedder.adapter_slot("broken", broken)
    (broken / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2}))
    with pytest.raises(AdapterError, match="cannot read"):
        embedder.adapter_slot("broken", broken)
    with pytest.raises(AdapterError, match=r"needs adapter_config\.json"):
        embedder.adapter_slot("empty", tmp_path)
    with pytest.raises(AdapterError, match="unknown adapter"):
        embedder.embed(["x"], adapter="never-loaded")
    # Adapting a module the model lacks (the word embeddings): a clear refusal.
    base = tmp_path / "base"
    save_tiny_model("bert", base, seed=5)
    odd = tmp_path / "odd"
    _peft_adapter(base, odd, ["word_embeddings"], seed=1)
    with pytest.raises(AdapterError, match="does not have or jaxembed cannot adapt"):
        embedder.adapter_slot("odd", odd)
    # Still serving after all of that.
    assert embedder.embed(["still fine"], adapter="a0").shape == (1, embedder.dimensions)


def test_eviction_and_reload_give_a_new_identity(bert):
    """One slot: loading a1 evicts a0; a0 reloaded gets a new identity, so cached rows keyed by
    the old identity can never be served for what may be new files."""
    base, adapters, _ = bert
    embedder = Embedder.from_pretrained(base, dtype="float32", compile_cache_dir=False)
    bank = embedder.enable_lora(max_loras=1, max_rank=8)
    path0, path1 = adapters["a0"][0], adapters["a1"][0]
    embedder.adapter_slot("a0", path0)
    first = bank.identity("a0")
    with pytest.raises(OverloadedError):  # a0 is pinned: no slot for a1
        embedder.adapter_slot("a1", path1)
    bank.release("a0")
    embedder.adapter_slot("a1", path1)  # evicts a0
    assert bank.loaded() == ["a1"]
    bank.release("a1")
    embedder.adapter_slot("a0", path0)
    assert bank.identity("a0") != first and bank.loaded() == ["a0"]
    texts = varied_texts()[:4]
    want = bert[2].embed(texts, adapter="a0", truncate=True)
    assert np.abs(embedder.embed(texts, adapter="a0", truncate=True) - want).max() <= 1e-6


_NEW_FAMILIES = {
    # family: (targets, where the transformers backbone is saved relative to the ST directory)
    "modernbert": (["Wqkv", "Wo", "Wi"], ""),
    "nomic_bert": (["q_proj", "v_proj", "o_proj", "gate_proj", "down_proj"], ""),
    "embeddinggemma": (["q_proj", "k_proj", "o_proj", "up_proj", "down_proj"], "-base"),
}


@pytest.mark.parametrize("family", sorted(_NEW_FAMILIES))
def test_adapters_on_the_newer_encoders_match_peft(family, tmp_path):
    """PEFT adapters on ModernBERT (fused Wqkv, Wi), NomicBERT (transformers' module names) and
    EmbeddingGemma (its Dense modules after pooling), against sentence-transformers running the
    peft-merged backbone."""
    from sentence_transformers import SentenceTransformer

    from tests.helpers import save_tiny_embedding_gemma, save_tiny_modernbert, save_tiny_nomic_bert

    saver = {
        "modernbert": save_tiny_modernbert,
        "nomic_bert": save_tiny_nomic_bert,
        "embeddinggemma": save_tiny_embedding_gemma,
    }[family]
    targets, suffix = _NEW_FAMILIES[family]
    path = tmp_path / "model"
    saver(path, seed=21)
    backbone = tmp_path / f"model{suffix}"
    peft_model = _peft_adapter(backbone, tmp_path / "adapter", targets, seed=22)
    texts = varied_texts()[:8]
    reference = SentenceTransformer(str(path), device="cpu")
    merged = peft_model.merge_and_unload()
    for attribute in ("auto_model", "model"):  # sentence-transformers 6 reads `model`
        if hasattr(reference[0], attribute):
            setattr(reference[0], attribute, merged)
    want = reference.encode(texts)
    embedder = Embedder.from_pretrained(path, compile_cache_dir=False)
    try:
        embedder.adapter_slot("a", tmp_path / "adapter")
        ours = embedder.embed(texts, adapter="a", truncate=True)
        assert _cosines(ours, want).min() >= 0.99999
        assert _cosines(embedder.embed(texts, truncate=True), want).min() < 0.999
    finally:
        embedder.close()


def test_nomic_fused_wqkv_adapter_equals_its_split_form(tmp_path):
    """nomic's own module names (one Wqkv LoRA) load as q/k/v adapters sharing A."""
    from safetensors.numpy import load_file, save_file

    from jaxembed.lora import load_adapter
    from jaxembed.weights.loader import load_model
    from tests.helpers import save_tiny_nomic_bert

    save_tiny_nomic_bert(tmp_path / "model", seed=3)
    split = tmp_path / "split"
    _peft_adapter(tmp_path / "model", split, ["q_proj", "k_proj", "v_proj"], seed=4)
    tensors = load_file(split / "adapter_model.safetensors")
    fused = {}
    for key in [k for k in tensors if ".q_proj.lora_A" in k]:
        stem = key.split(".self_attn.")[0].replace("layers.", "encoder.layers.")
        parts = [key.replace("q_proj", n) for n in ("q_proj", "k_proj", "v_proj")]
        a = tensors[parts[0]]
        for other in parts[1:]:
            tensors[other] = a  # one shared A, as a fused adapter has
        fused[f"{stem}.attn.Wqkv.lora_A.weight"] = a
        fused[f"{stem}.attn.Wqkv.lora_B.weight"] = np.concatenate(
            [tensors[p.replace("lora_A", "lora_B")] for p in parts]
        )
    (tmp_path / "fused").mkdir()
    save_file(fused, tmp_path / "fused" / "adapter_model.safetensors")
    save_file(tensors, split / "adapter_model.safetensors")
    (tmp_path / "fused" / "adapter_config.json").write_text(
        (split / "adapter_config.json").read_text()
    )
    config = load_model(tmp_path / "model").config
    one = load_adapter(tmp_path / "fused", config, name="f", max_rank=8).weights
    other = load_adapter(split, config, name="s", max_rank=8).weights
    assert set(one) == set(other) == {"q", "k", "v"}
    for site in one:
        for mine, theirs in zip(one[site], other[site], strict=True):
            np.testing.assert_array_equal(mine, theirs)
