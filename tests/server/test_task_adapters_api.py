"""jina-embeddings-v3's built-in task adapters through a real server: `model: "<name>:<task>"`,
the `task` extension and input types (OpenAI client), Cohere's input types (cohere SDK),
mixed tasks under concurrency, and bad task requests answered 400 in each API's shape."""

from __future__ import annotations

import concurrent.futures

import cohere
import numpy as np
import openai
import pytest

from jaxembed.api import Embedder
from tests.helpers import JINA_TASKS, ServerProcess, save_tiny_jina_v3

TEXTS = ["how do rotary positions work", "a tutorial on TPU pods", "cats sleep most of the day"]


@pytest.fixture(scope="module")
def jina_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-jina-v3")
    save_tiny_jina_v3(path, seed=8)
    return path


@pytest.fixture(scope="module")
def server(jina_dir):
    proc = ServerProcess("--model", f"jina={jina_dir}", "--seq-lengths", "32,64")
    yield proc
    assert proc.stop() == 0, proc.log()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="EMPTY", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def expected(jina_dir):
    embedder = Embedder.from_pretrained(jina_dir, compile_cache_dir=False)
    try:
        yield {task: embedder.embed(TEXTS, task=task) for task in (None, *JINA_TASKS)}
    finally:
        embedder.close()


def _vectors(response) -> np.ndarray:
    return np.array([d.embedding for d in response.data], dtype=np.float32)


def test_tasks_by_model_name_task_field_and_input_type(client, expected):
    for task in JINA_TASKS:
        by_name = client.embeddings.create(model=f"jina:{task}", input=TEXTS)
        assert by_name.model == f"jina:{task}"
        np.testing.assert_allclose(_vectors(by_name), expected[task], atol=1e-5)
    by_field = client.embeddings.create(
        model="jina", input=TEXTS, extra_body={"task": "separation"}
    )
    np.testing.assert_allclose(_vectors(by_field), expected["separation"], atol=1e-5)
    query = client.embeddings.create(model="jina", input=TEXTS, extra_body={"input_type": "query"})
    np.testing.assert_allclose(_vectors(query), expected["retrieval.query"], atol=1e-5)
    base = client.embeddings.create(model="jina", input=TEXTS)
    np.testing.assert_allclose(_vectors(base), expected[None], atol=1e-5)
    listed = {m.id for m in client.models.list().data}
    assert {f"jina:{t}" for t in JINA_TASKS} <= listed


def test_concurrent_requests_of_every_task_stay_apart(client, expected):
    def one(i: int):
        task = JINA_TASKS[i % len(JINA_TASKS)]
        return task, _vectors(client.embeddings.create(model=f"jina:{task}", input=TEXTS))

    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        for task, vectors in pool.map(one, range(20)):
            np.testing.assert_allclose(vectors, expected[task], atol=1e-5)


def test_cohere_input_types_pick_tasks(server, expected):
    co = cohere.ClientV2(api_key="unused", base_url=server.url)
    for input_type, task in (("search_query", "retrieval.query"), ("clustering", "separation")):
        got = co.embed(model="jina", texts=TEXTS, input_type=input_type, embedding_types=["float"])
        np.testing.assert_allclose(np.array(got.embeddings.float_), expected[task], atol=1e-5)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "jina:summarise"}, "lora_path"),  # not a task, and LoRA is off
        ({"model": "jina", "task": "summarise"}, "task"),
        ({"model": "jina:separation", "task": "classification"}, "task"),
        ({"model": "jina", "task": "separation", "input_type": "query"}, "task"),
        ({"model": "jina", "task": 3}, "task"),
    ],
)
def test_bad_task_requests_are_openai_400s(client, body, param):
    extra = {k: v for k, v in body.items() if k != "model"}
    with pytest.raises(openai.BadRequestError) as raised:
        client.embeddings.create(model=body["model"], input=TEXTS, extra_body=extra)
    error = raised.value.response.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    assert error["param"] in (param, "model"), error
