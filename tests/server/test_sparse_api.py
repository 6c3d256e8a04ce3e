"""SPLADE through a real server: TEI's /embed_sparse and /v1/embeddings with embedding_type
"sparse" (openai client) equal the in-process vectors and each other; pruning; bad requests."""

from __future__ import annotations

import httpx
import numpy as np
import openai
import pytest

from jaxembed.api import Embedder
from tests.helpers import ServerProcess, save_tiny_splade

TEXTS = ["sparse retrieval with learned term weights", "the cat sat on the mat", "tpu pods"]


@pytest.fixture(scope="module")
def splade_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-splade")
    save_tiny_splade(path, seed=6)
    return path


@pytest.fixture(scope="module")
def server(splade_dir):
    proc = ServerProcess(
        "--model", f"splade={splade_dir}", "--model", "all-minilm-l6-v2", "--seq-lengths", "32,64"
    )
    yield proc
    assert proc.stop() == 0, proc.log()


@pytest.fixture(scope="module")
def dense(splade_dir):
    embedder = Embedder.from_pretrained(splade_dir, compile_cache_dir=False)
    try:
        yield embedder.embed(TEXTS)
    finally:
        embedder.close()


def _densify(indices, values, width: int = 30522) -> np.ndarray:
    row = np.zeros(width, np.float32)
    row[np.asarray(indices, dtype=np.int64)] = values
    return row


def test_tei_embed_sparse_matches_in_process(server, dense):
    got = httpx.post(server.url + "/embed_sparse", json={"inputs": TEXTS}, timeout=60)
    assert got.status_code == 200, got.text
    for row, want in zip(got.json(), dense, strict=True):
        indices = [e["index"] for e in row]
        assert indices == sorted(indices) and indices == np.flatnonzero(want).tolist()
        np.testing.assert_allclose(_densify(indices, [e["value"] for e in row]), want, atol=1e-5)
    one = httpx.post(server.url + "/embed_sparse", json={"inputs": TEXTS[0], "sparse_top_k": 5})
    assert len(one.json()) == 1 and len(one.json()[0]) == 5


def test_openai_sparse_embedding_type(server, dense):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="EMPTY", max_retries=0)
    response = client.embeddings.create(
        model="splade",
        input=TEXTS,
        extra_body={"embedding_type": "sparse", "sparse_threshold": 0.1},
    )
    for item, want in zip(response.data, dense, strict=True):
        sparse = item.embedding
        assert set(sparse) == {"indices", "values"}
        assert sparse["indices"] == np.flatnonzero(want > 0.1).tolist()
        np.testing.assert_allclose(sparse["values"], want[want > 0.1], atol=1e-5)
    full = client.embeddings.create(model="splade", input=TEXTS[:1])  # dense on request
    np.testing.assert_allclose(full.data[0].embedding, dense[0], atol=1e-5)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "all-minilm-l6-v2", "embedding_type": "sparse"}, "embedding_type"),
        ({"model": "splade", "dimensions": 64}, "dimensions"),
        ({"model": "splade", "embedding_type": "int8"}, "embedding_type"),
        ({"model": "splade", "embedding_type": "sparse", "sparse_top_k": 0}, "sparse_top_k"),
        (
            {"model": "splade", "embedding_type": "sparse", "sparse_threshold": -1},
            "sparse_threshold",
        ),
    ],
)
def test_bad_sparse_requests_are_openai_400s(server, body, param):
    got = httpx.post(server.url + "/v1/embeddings", json={"input": TEXTS, **body}, timeout=60)
    assert got.status_code == 400, got.text
    error = got.json()["error"]
    assert error["param"] == param, error


def test_tei_errors(server):
    empty = httpx.post(server.url + "/embed_sparse", json={"inputs": []})
    assert empty.status_code == 400 and empty.json()["error_type"] == "empty"
    info = httpx.get(server.url + "/info").json()
    assert info["model_type"] == {"embedding": {"pooling": "splade"}}
