"""Tiny random jina-embeddings-v3 vs transformers' JinaEmbeddingsV3Model: the base model, and each
of its five task adapters against the transformers model with that task's adapters merged."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from jaxembed.api import Embedder
from jaxembed.errors import InvalidInputError
from jaxembed.weights.convert import convert
from jaxembed.weights.loader import load_model
from tests.helpers import (
    JINA_TASK_PROMPTS,
    JINA_TASKS,
    MINILM_DIR,
    jina_task_model,
    save_tiny_jina_v3,
)
from tests.texts import varied_texts


@pytest.fixture(scope="module")
def jina(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-jina-v3")
    model, adapters, scaling = save_tiny_jina_v3(path, seed=5)
    return model, adapters, scaling, path


@pytest.fixture(scope="module")
def embedder(jina):
    embedder = Embedder.from_pretrained(jina[3], compile_cache_dir=False)
    yield embedder
    embedder.close()


@pytest.fixture(scope="module")
def texts():
    return [t for t in varied_texts() if 3 < len(t.split()) < 30][:10]


def _reference(model, texts: list[str], prompt: str = "") -> np.ndarray:
    """Mean-pooled, normalised embeddings of `prompt + text` (jina's encode)."""
    import transformers

    tokenizer = transformers.BertTokenizerFast.from_pretrained(MINILM_DIR)  # the tiny model's
    batch = tokenizer([prompt + t for t in texts], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"][..., None].float()
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    return torch.nn.functional.normalize(pooled, dim=-1).numpy()


def _min_cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.min(np.sum(a * b, axis=1)))


@pytest.mark.parametrize("with_tasks", [True, False], ids=["jina-format", "transformers-format"])
def test_base_hidden_states_match_transformers(tmp_path, with_tasks):
    model, _, _ = save_tiny_jina_v3(tmp_path, seed=2, with_tasks=with_tasks)
    loaded = load_model(tmp_path, dtype="float32")
    assert loaded.card.family == "jina_embeddings_v3"
    assert loaded.card.tasks == (JINA_TASKS if with_tasks else ())
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 30000, (3, 24)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, 9:] = ids[1, 9:] = 0
    ours = np.asarray(loaded.module().apply({"params": loaded.params}, ids, mask))
    with torch.no_grad():
        want = model(input_ids=torch.tensor(ids).long(), attention_mask=torch.tensor(mask))
    real = mask.astype(bool)
    np.testing.assert_allclose(ours[real], want.last_hidden_state.numpy()[real], atol=1e-5)


@pytest.mark.parametrize("task", JINA_TASKS)
def test_each_task_matches_its_merged_adapters(jina, embedder, texts, task):
    model, adapters, scaling, _ = jina
    want = _reference(
        jina_task_model(model, adapters, scaling, task), texts, JINA_TASK_PROMPTS.get(task, "")
    )
    assert _min_cos(embedder.embed(texts, task=task), want) >= 0.99999
    # The base model (no task) is a different embedding: the adapters are really applied.
    assert _min_cos(embedder.embed(texts), want) < 0.999


def test_tasks_mixed_in_one_batch(jina, embedder, texts):
    model, adapters, scaling, _ = jina
    slots = [i % (len(JINA_TASKS) + 1) for i in range(len(texts))]  # 0 = base model
    tokens = embedder.tokenize(texts)
    ours = embedder.embed_token_lists(tokens, adapter_slots=slots)
    assert len(embedder.plan(tokens, packing=False)) == 1  # one batch holds every task
    for slot in set(slots):
        rows = [i for i, s in enumerate(slots) if s == slot]
        reference = (
            model if slot == 0 else jina_task_model(model, adapters, scaling, JINA_TASKS[slot - 1])
        )
        want = _reference(reference, [texts[i] for i in rows])
        assert _min_cos(ours[rows], want) >= 0.99999


def test_tasks_by_input_type_and_by_name(embedder, texts):
    query = embedder.embed(texts, task="retrieval.query")
    np.testing.assert_allclose(embedder.embed(texts, prompt_name="query"), query, atol=1e-6)
    np.testing.assert_allclose(embedder.embed(texts, adapter="retrieval.query"), query, atol=1e-6)
    clustering = embedder.embed(texts, prompt_name="clustering")
    np.testing.assert_allclose(clustering, embedder.embed(texts, task="separation"), atol=1e-6)
    with pytest.raises(InvalidInputError, match="two tasks"):
        embedder.embed(texts, task="separation", prompt_name="query")
    with pytest.raises(InvalidInputError, match="no task 'summarise'"):
        embedder.embed(texts, task="summarise")
    assert embedder.packing is False  # tasks apply per row


def test_bfloat16_and_conversion_keep_the_tasks(jina, embedder, texts, tmp_path):
    path = jina[3]
    half = Embedder.from_pretrained(path, dtype="bfloat16", compile_cache_dir=False)
    convert(path, tmp_path / "out", show_progress=False)
    converted = Embedder.from_pretrained(tmp_path / "out", compile_cache_dir=False)
    try:
        for task in ("retrieval.passage", "text-matching"):
            want = embedder.embed(texts, task=task)
            assert _min_cos(half.embed(texts, task=task), want) >= 0.999
            np.testing.assert_array_equal(converted.embed(texts, task=task), want)
        assert converted.card.tasks == JINA_TASKS
    finally:
        half.close()
        converted.close()


def test_plan_counts_jina_embeddings_v3_parameters():
    """jina-embeddings-v3's config (XLM-R large with RoPE, five rank-4 task adapters): the plan's
    count = transformers' JinaEmbeddingsV3Model without its unused pooler + the adapter stacks
    jina's checkpoint holds (every Linear and Embedding: A [5, r, in] + B [5, out, r])."""
    import transformers

    from jaxembed.families import model_family
    from jaxembed.parallel.plan import plan_parameters
    from jaxembed.registry import find_card

    card = find_card("jina-embeddings-v3")
    family, ours = model_family(card.architecture, card)
    counted = plan_parameters(family, ours, 1, 1, "float32").parameters
    config = transformers.JinaEmbeddingsV3Config()
    with torch.device("meta"):
        reference = transformers.JinaEmbeddingsV3Model(config)
    base = sum(p.numel() for n, p in reference.named_parameters() if not n.startswith("pooler."))
    d, f, layers, r, tasks = 1024, 4096, 24, 4, 5
    per_layer = r * (d + 3 * d) + r * (d + d) + r * (d + f) + r * (f + d)
    tables = r * (250002 + d) + r * (1 + d)
    assert counted == base + tasks * (layers * per_layer + tables)
    assert 570e6 < counted < 575e6  # jina's "570 million parameters"
