"""Static and Router models through a real server: a StaticEmbedding model, an asymmetric
dense Router and an inference-free sparse Router in one `--config`, each route picked by the
request's input type (OpenAI `input_type`, Cohere `input_type`, TEI `prompt_name`) and
equal to sentence-transformers' `encode_query` / `encode_document` / `encode`."""

from __future__ import annotations

import httpx
import numpy as np
import openai
import pytest

from tests.helpers import ServerProcess, save_dense_router, save_sparse_router
from tests.test_static import _save_static

TEXTS = ["what is a panda?", "Pandas eat bamboo for most of the day.", "x"]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("st_models")
    return {  # the sparse Router first: TEI's routes serve the first model
        "sparse-router": save_sparse_router(root / "sparse-router", seed=7),
        "static": _save_static(root / "static", seed=5),
        "dense-router": save_dense_router(root / "dense-router", seed=6),
    }


@pytest.fixture(scope="module")
def server(dirs, tmp_path_factory):
    config = tmp_path_factory.mktemp("cfg") / "models.yaml"
    config.write_text(
        "models:\n"
        + "".join(f"  - name: {name}\n    model: {path}\n" for name, path in dirs.items())
    )
    # A small grid: five engine models (three models, two with two routes) compile in the
    # background, and on a 2-core machine that must not starve the engine process.
    proc = ServerProcess(
        "--config", str(config), "--seq-lengths", "16,64", "--batch-sizes", "1,4,16"
    )
    yield proc
    assert proc.stop() == 0, proc.log()


def _openai(server, model, **extra) -> np.ndarray:
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="EMPTY", max_retries=0)
    response = client.embeddings.create(model=model, input=TEXTS, extra_body=extra or None)
    return np.asarray([d.embedding for d in response.data], dtype=np.float32)


def test_static_model_over_openai(server, dirs):
    from sentence_transformers import SentenceTransformer

    want = SentenceTransformer(str(dirs["static"]), device="cpu").encode(TEXTS)
    np.testing.assert_allclose(_openai(server, "static"), want, atol=1e-5)


def test_dense_router_routes_by_input_type_on_every_api(server, dirs):
    import cohere
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(dirs["dense-router"]), device="cpu")
    queries, documents = reference.encode_query(TEXTS), reference.encode_document(TEXTS)
    np.testing.assert_allclose(
        _openai(server, "dense-router", input_type="query"), queries, atol=1e-5
    )
    np.testing.assert_allclose(
        _openai(server, "dense-router", input_type="document"), documents, atol=1e-5
    )
    # No input type: sentence-transformers' encode() takes the default (document) route.
    np.testing.assert_allclose(_openai(server, "dense-router"), reference.encode(TEXTS), atol=1e-5)
    co = cohere.ClientV2(api_key="unused", base_url=server.url)
    for input_type, want in (("search_query", queries), ("search_document", documents)):
        got = co.embed(
            model="dense-router", texts=TEXTS, input_type=input_type, embedding_types=["float"]
        )
        np.testing.assert_allclose(np.asarray(got.embeddings.float_), want, atol=1e-5)
    models = httpx.get(server.url + "/v1/models").json()["data"]
    assert [m["id"] for m in models].count("dense-router") == 1


def test_sparse_router_over_tei_embed_sparse(server, dirs):
    from sentence_transformers.sparse_encoder import SparseEncoder

    reference = SparseEncoder(str(dirs["sparse-router"]), device="cpu")
    for prompt_name, encode in (
        ("query", reference.encode_query),
        ("document", reference.encode_document),
    ):
        want = encode(TEXTS, convert_to_tensor=True).to_dense().numpy()
        got = httpx.post(
            server.url + "/embed_sparse",
            json={"inputs": TEXTS, "prompt_name": prompt_name},
            timeout=60,
        )
        assert got.status_code == 200, got.text
        for row, expected in zip(got.json(), want, strict=True):
            assert [e["index"] for e in row] == np.flatnonzero(expected).tolist()
            values = np.asarray([e["value"] for e in row])
            np.testing.assert_allclose(values, expected[expected != 0], rtol=1e-5, atol=1e-6)
