"""/v1/models, /health, /ready, /metrics, /tokenize, OpenAPI and docs, request ids."""

from __future__ import annotations

import httpx
import numpy as np

from tests.helpers import metric_value

MODEL = "all-minilm-l6-v2"


def test_models_list_shape(server):
    body = httpx.get(server.url + "/v1/models").json()
    assert body["object"] == "list"
    ids = [m["id"] for m in body["data"]]
    assert ids[0] == MODEL and "sentence-transformers/all-MiniLM-L6-v2" in ids
    assert all(m["object"] == "model" and m["owned_by"] == "jaxembed" for m in body["data"])
    assert body["data"][0]["similarity"] == "cosine"  # the card's similarity_fn_name


def test_health_and_ready(server):
    assert httpx.get(server.url + "/health").status_code == 200
    assert httpx.get(server.url + "/ready").text == "ready"


def test_tokenize(server, embedder):
    r = httpx.post(
        server.url + "/tokenize", json={"input": ["hello world", "x"], "model": MODEL}
    ).json()
    assert r["tokens"] == [t.tolist() for t in embedder.tokenize(["hello world", "x"])]
    assert r["count"] == sum(len(t) for t in r["tokens"]) and r["max_model_len"] == 256
    bad = httpx.post(server.url + "/tokenize", json={"input": "   "})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "input"


def test_metrics_exposes_the_documented_series(server):
    httpx.post(server.url + "/v1/embeddings", json={"input": "count me", "model": MODEL})
    text = httpx.get(server.url + "/metrics").text
    for name in (
        "jaxembed_requests_total",
        "jaxembed_errors_total",
        "jaxembed_request_latency_seconds_bucket",
        "jaxembed_prompt_tokens_total",
        "jaxembed_batches_total",
        "jaxembed_batch_fill_ratio_bucket",
        "jaxembed_batch_requests_bucket",
        "jaxembed_queue_requests",
        "jaxembed_queue_tokens",
        "jaxembed_ready 1.0",
    ):
        assert name in text, name
    assert 'route="/v1/embeddings",status="200"' in text


def test_openapi_document_is_valid(server):
    from openapi_spec_validator import validate

    spec = httpx.get(server.url + "/openapi.json").json()
    validate(spec)
    assert {"/v1/embeddings", "/tokenize", "/v1/models", "/health", "/ready", "/metrics"} <= set(
        spec["paths"]
    )
    assert "EmbeddingRequest" in spec["components"]["schemas"]
    docs = httpx.get(server.url + "/docs")  # Swagger UI over /openapi.json (test_docs_ui.py)
    assert docs.status_code == 200 and "/openapi.json" in docs.text
    assert "http" not in docs.text.replace("http-equiv", "")  # every asset from this server


def test_request_id_is_echoed_or_made(server):
    r = httpx.get(server.url + "/v1/models", headers={"X-Request-Id": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    assert len(httpx.get(server.url + "/v1/models").headers["x-request-id"]) == 32


def test_user_and_load_are_logged(server):
    import time

    httpx.post(
        server.url + "/v1/embeddings",
        json={"input": "who am i", "model": MODEL, "user": "alice-42"},
    )
    for _ in range(50):
        if "for user alice-42" in server.log():
            break
        time.sleep(0.1)
    log = server.log()
    assert "for user alice-42" in log
    assert "jaxembed.server: loaded all-minilm-l6-v2" in server.log_path.read_text()


def test_repeated_inputs_come_from_the_cache(server, embedder):
    import numpy as np

    text = "a sentence asked twice, the second time answered from the cache"
    hits = metric_value(server.url, "jaxembed_cache_hits_total")
    first = httpx.post(server.url + "/v1/embeddings", json={"input": [text, text]}).json()
    assert (
        metric_value(server.url, "jaxembed_cache_hits_total") == hits
    )  # in-request duplicate: computed once
    a, b = (np.asarray(d["embedding"], dtype=np.float32) for d in first["data"])
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - embedder.embed([text])[0]).max() <= 1e-6

    again = httpx.post(server.url + "/v1/embeddings", json={"input": text, "dimensions": 64}).json()
    assert metric_value(server.url, "jaxembed_cache_hits_total") == hits + 1
    assert again["usage"]["prompt_tokens"] == first["usage"]["prompt_tokens"] // 2
    reduced = np.asarray(again["data"][0]["embedding"], dtype=np.float32)
    np.testing.assert_allclose(reduced, a[:64] / np.linalg.norm(a[:64]), atol=1e-7)
    assert metric_value(server.url, "jaxembed_cache_bytes") > 0


def _base64_rows(body: dict) -> np.ndarray:
    import base64

    return np.stack(
        [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in body["data"]]
    )


def test_server_and_python_api_give_bit_identical_vectors(server, embedder):
    """Both run the same EmbeddingService pipeline: the same inputs give the same bits.
    (Texts no other test sends: a cached vector was computed in another batch, ≤ 1e-6 away.)"""
    texts = ["bit-identical through both APIs", "the Python API and the HTTP server agree", "q"]
    for options, kwargs in (
        ({}, {}),
        ({"dimensions": 64}, {"dimensions": 64}),
        ({"input_type": "query", "truncate": True}, {"prompt_name": "query", "truncate": True}),
    ):
        body = httpx.post(
            server.url + "/v1/embeddings",
            json={"input": texts, "encoding_format": "base64", **options},
        ).json()
        np.testing.assert_array_equal(_base64_rows(body), embedder.embed(texts, **kwargs))


def test_root_says_where_to_go(server):
    body = httpx.get(server.url + "/").json()
    assert body["name"] == "jaxembed" and body["docs"] == "/docs"
    assert "all-minilm-l6-v2" in body["models"]


def test_openapi_examples_are_answered(server):
    """Every request example /docs shows is answered without a 5xx; the first example of each
    embedding, tokenizer and peer-embedding operation succeeds as sent (Try it out's default)."""
    spec = httpx.get(server.url + "/openapi.json").json()
    must_succeed = {"createEmbedding", "tokenize", "detokenize", "teiEmbed", "cohereEmbedV2"}
    seen = set()
    for path, operations in spec["paths"].items():
        for operation in operations.values():
            body = operation.get("requestBody", {}).get("content", {}).get("application/json", {})
            for i, example in enumerate(body.get("examples", {}).values()):
                answer = httpx.post(server.url + path, json=example["value"], timeout=60)
                assert answer.status_code < 500, (path, example["summary"], answer.text[:300])
                if i == 0 and operation["operationId"] in must_succeed:
                    assert answer.status_code == 200, (path, answer.text[:300])
                    seen.add(operation["operationId"])
    assert seen == must_succeed
