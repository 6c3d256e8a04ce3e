"""Peers' APIs on a real server: TEI's native routes through `huggingface_hub`, Infinity's
paths, and quantized embeddings (int8/uint8/binary/ubinary) against sentence-transformers."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import pytest
from huggingface_hub import InferenceClient
from sentence_transformers.util.quantization import quantize_embeddings

TEXTS = ["peers call us with their own clients", "a second text, somewhat longer than the first"]


def _openai_floats(server, texts, **extra) -> np.ndarray:
    body = httpx.post(
        server.url + "/v1/embeddings", json={"input": texts, **extra}, timeout=60
    ).json()
    return np.asarray([d["embedding"] for d in body["data"]])


# -- TEI -----------------------------------------------------------------------------------


@pytest.fixture
def hub_client_online(monkeypatch):
    """The suite sets HF_HUB_OFFLINE (no hub here); this client talks to 127.0.0.1 only."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)


def test_tei_feature_extraction_through_huggingface_hub(server, hub_client_online):
    client = InferenceClient(base_url=server.url)
    one = client.feature_extraction(TEXTS[0])
    many = client.feature_extraction(TEXTS, truncate=True)
    want = _openai_floats(server, TEXTS).astype(np.float32)
    assert one.shape == (1, 384) and many.shape == (2, 384)
    np.testing.assert_allclose(many, want, atol=1e-6)
    np.testing.assert_allclose(one[0], want[0], atol=1e-6)
    query = client.feature_extraction(TEXTS[0], prompt_name="query")
    np.testing.assert_allclose(query[0], want[0], atol=1e-6)  # MiniLM has no query prompt


def test_tei_embed_options_and_info(server):
    reduced = httpx.post(server.url + "/embed", json={"inputs": TEXTS, "dimensions": 64}).json()
    want = _openai_floats(server, TEXTS, dimensions=64)
    np.testing.assert_allclose(np.asarray(reduced), want, atol=1e-6)
    left = httpx.post(
        server.url + "/embed",
        json={"inputs": "word " * 400, "truncate": True, "truncation_direction": "Left"},
    )
    assert left.status_code == 200 and len(left.json()[0]) == 384
    info = httpx.get(server.url + "/info").json()
    assert info["model_id"] == "all-minilm-l6-v2" and info["max_input_length"] == 256
    assert info["model_type"] == {"embedding": {"pooling": "mean"}}
    assert info["max_batch_tokens"] > 0 and info["version"]


@pytest.mark.parametrize(
    "body, status, kind, words",
    [
        ({"inputs": []}, 400, "empty", "cannot be empty"),
        ({"inputs": 5}, 422, "validation", "inputs"),
        ({"inputs": "x", "normalize": "yes"}, 422, "validation", "normalize"),
        ({"inputs": "word " * 400}, 413, "validation", "maximum of 256"),
        ({"inputs": "x", "normalize": False}, 413, "validation", "normalize=false"),
        ({"inputs": "x", "dimensions": 1000}, 413, "validation", "dimensions=1000"),
        ({"inputs": "x", "prompt_name": "nope"}, 413, "validation", "no prompt 'nope'"),
    ],
)
def test_tei_errors_use_tei_bodies(server, body, status, kind, words):
    response = httpx.post(server.url + "/embed", json=body)
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error", "error_type"}
    assert response.json()["error_type"] == kind and words in response.json()["error"]


def test_tei_embed_all_is_refused_clearly(server):
    response = httpx.post(server.url + "/embed_all", json={"inputs": "x"})
    assert response.status_code == 413 and "not supported" in response.json()["error"]


def test_infinity_paths_are_aliases(server):
    body = httpx.post(server.url + "/embeddings", json={"input": TEXTS}).json()
    np.testing.assert_allclose(
        np.asarray([d["embedding"] for d in body["data"]]), _openai_floats(server, TEXTS), atol=1e-7
    )

    def listed(path: str) -> list[dict]:  # `created` is the clock at the time of the call
        return [{**m, "created": 0} for m in httpx.get(server.url + path).json()["data"]]

    assert listed("/models") == listed("/v1/models")


# -- quantized embeddings ------------------------------------------------------------------


def _typed(server, texts, embedding_type, **extra) -> np.ndarray:
    response = httpx.post(
        server.url + "/v1/embeddings",
        json={"input": texts, "embedding_type": embedding_type, **extra},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    return np.asarray([d["embedding"] for d in response.json()["data"]])


@pytest.mark.parametrize("precision", ["binary", "ubinary"])
def test_binary_equals_sentence_transformers(server, precision):
    floats = _openai_floats(server, TEXTS).astype(np.float32)
    got = _typed(server, TEXTS, precision)
    want = quantize_embeddings(floats, precision=precision)
    np.testing.assert_array_equal(got, want)
    assert got.shape == (2, 48)


@pytest.mark.parametrize("precision", ["int8", "uint8"])
def test_int8_equals_sentence_transformers_given_the_ranges(server, precision):
    got = _typed(server, TEXTS, precision)  # the first int8 request calibrates the model
    entry = httpx.get(server.url + "/v1/models").json()["data"][0]["quantization"]
    ranges = np.asarray(entry["int8_ranges"], dtype=np.float32)
    assert ranges.shape == (2, 384) and "calibration" in entry["int8_calibration"]
    floats = _openai_floats(server, TEXTS).astype(np.float32)
    np.testing.assert_array_equal(got, quantize_embeddings(floats, precision, ranges=ranges))
    reduced = _typed(server, TEXTS, precision, dimensions=128)
    assert reduced.shape == (2, 128)  # ranges of the reduced vectors (own distribution)


def test_quantized_base64_is_the_raw_bytes(server):
    body = httpx.post(
        server.url + "/v1/embeddings",
        json={"input": TEXTS, "embedding_type": "int8", "encoding_format": "base64"},
    ).json()
    decoded = np.stack(
        [np.frombuffer(base64.b64decode(d["embedding"]), dtype=np.int8) for d in body["data"]]
    )
    np.testing.assert_array_equal(decoded, _typed(server, TEXTS, "int8"))


@pytest.mark.parametrize(
    "extra, words",
    [
        ({"embedding_type": "binary", "dimensions": 12}, "not a multiple of 8"),
        ({"embedding_type": "int4"}, "embedding_type"),
        ({"embedding_type": 8}, "embedding_type"),
    ],
)
def test_bad_embedding_types_are_400(server, extra, words):
    response = httpx.post(server.url + "/v1/embeddings", json={"input": TEXTS, **extra})
    assert response.status_code == 400
    assert words in response.json()["error"]["message"]
    assert response.json()["error"]["param"] == "embedding_type"


def test_quantize_matches_sentence_transformers_on_random_vectors():
    from jaxembed.quantization import quantize, ranges_of

    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(50, 64)).astype(np.float32)
    calibration = rng.normal(size=(500, 64)).astype(np.float32)
    ranges = ranges_of(calibration)
    for precision in ("int8", "uint8"):
        want = quantize_embeddings(vectors, precision, ranges=ranges)
        np.testing.assert_array_equal(quantize(vectors, precision, ranges), want)
    for precision in ("binary", "ubinary"):
        np.testing.assert_array_equal(
            quantize(vectors, precision), quantize_embeddings(vectors, precision)
        )


# -- Cohere --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cohere_client(server):
    import cohere

    return cohere.ClientV2(api_key="unused", base_url=server.url)


def test_cohere_v2_embed_through_the_sdk(server, cohere_client):
    response = cohere_client.embed(
        model="all-minilm-l6-v2",
        texts=TEXTS,
        input_type="search_document",
        embedding_types=["float", "int8", "uint8", "binary", "ubinary", "base64"],
    )
    floats = np.asarray(response.embeddings.float_, dtype=np.float32)
    np.testing.assert_allclose(floats, _openai_floats(server, TEXTS), atol=1e-6)
    np.testing.assert_array_equal(response.embeddings.int8, _typed(server, TEXTS, "int8"))
    np.testing.assert_array_equal(response.embeddings.uint8, _typed(server, TEXTS, "uint8"))
    np.testing.assert_array_equal(
        response.embeddings.binary, quantize_embeddings(floats, precision="binary")
    )
    np.testing.assert_array_equal(
        response.embeddings.ubinary, quantize_embeddings(floats, precision="ubinary")
    )
    decoded = np.frombuffer(base64.b64decode(response.embeddings.base64[0]), dtype="<f4")
    np.testing.assert_array_equal(decoded, floats[0])
    tokens = httpx.post(server.url + "/tokenize", json={"input": TEXTS}).json()["count"]
    assert response.meta.billed_units.input_tokens == tokens
    assert response.texts == TEXTS


def test_cohere_truncation_dimensions_and_v1(server, cohere_client):
    import cohere

    long_text = "word " * 400
    start = cohere_client.embed(
        model="all-minilm-l6-v2", texts=[long_text + "end"], input_type="search_query",
        truncate="START", max_tokens=16, output_dimension=64,
    )  # fmt: skip
    assert len(start.embeddings.float_[0]) == 64 and start.meta.billed_units.input_tokens == 16
    with pytest.raises(cohere.BadRequestError) as refused:
        cohere_client.embed(
            model="all-minilm-l6-v2", texts=[long_text], input_type="search_query", truncate="NONE"
        )
    assert "maximum of 256" in refused.value.body["message"]
    v1 = cohere.Client(api_key="unused", base_url=server.url).embed(
        model="all-minilm-l6-v2", texts=TEXTS, input_type="search_query"
    )
    np.testing.assert_allclose(np.asarray(v1.embeddings), _openai_floats(server, TEXTS), atol=1e-6)


@pytest.mark.parametrize(
    "body, status, words",
    [
        ({"model": "nope", "texts": ["x"]}, 404, "does not exist"),
        ({"texts": ["x"], "images": ["data:,"]}, 400, "exactly one of"),
        ({"texts": ["x"], "embedding_types": ["int4"]}, 400, "embedding_types"),
        ({"texts": ["x"], "truncate": "MIDDLE"}, 400, "truncate"),
        (
            {"texts": ["x"], "embedding_types": ["binary"], "output_dimension": 12},
            400,
            "multiple of 8",
        ),
        ({"texts": [], "input_type": "search_query"}, 400, "empty"),
        ({"images": ["data:image/png;base64,AAAA"]}, 400, "only embeds text"),
    ],
)
def test_cohere_errors_use_cohere_bodies(server, body, status, words):
    response = httpx.post(server.url + "/v2/embed", json=body)
    assert response.status_code == status, response.text
    assert set(response.json()) == {"id", "message"} and words in response.json()["message"]


# -- framework clients ---------------------------------------------------------------------


def test_langchain_openai_embeddings(server):
    from langchain_openai import OpenAIEmbeddings

    # check_embedding_ctx_length=False: by default LangChain sends tiktoken ids of OpenAI's
    # vocabulary instead of text, which mean nothing to another model's tokenizer.
    embeddings = OpenAIEmbeddings(
        model="all-minilm-l6-v2",
        base_url=server.url + "/v1",
        api_key="unused",
        check_embedding_ctx_length=False,
    )
    documents = embeddings.embed_documents(TEXTS)
    query = embeddings.embed_query(TEXTS[0])
    want = _openai_floats(server, TEXTS)
    np.testing.assert_allclose(np.asarray(documents), want, atol=1e-6)
    np.testing.assert_allclose(np.asarray(query), want[0], atol=1e-6)


def test_llamaindex_openai_like_embedding(server):
    from llama_index.embeddings.openai import OpenAIEmbedding

    embedding = OpenAIEmbedding(
        model_name="all-minilm-l6-v2", api_base=server.url + "/v1", api_key="unused"
    )
    documents = embedding.get_text_embedding_batch(TEXTS)
    query = embedding.get_query_embedding(TEXTS[0])
    want = _openai_floats(server, TEXTS)
    np.testing.assert_allclose(np.asarray(documents), want, atol=1e-6)
    np.testing.assert_allclose(np.asarray(query), want[0], atol=1e-6)
