"""The OpenAI embeddings examples, verbatim through the official `openai` client, against a real server."""

from __future__ import annotations

import concurrent.futures
import re

import httpx
import numpy as np
import openai
import pytest

MODEL = "all-minilm-l6-v2"


def _vectors(response) -> np.ndarray:
    return np.array([d.embedding for d in response.data], dtype=np.float32)


def test_single_text(client, embedder):
    response = client.embeddings.create(
        model=MODEL, input="The food was delicious and the waiter..."
    )
    assert response.object == "list" and response.model == MODEL
    assert (
        len(response.data) == 1
        and response.data[0].index == 0
        and response.data[0].object == "embedding"
    )
    assert len(response.data[0].embedding) == 384
    expected_tokens = len(embedder.tokenize("The food was delicious and the waiter...")[0])
    assert response.usage.prompt_tokens == response.usage.total_tokens == expected_tokens
    np.testing.assert_allclose(
        _vectors(response)[0],
        embedder.embed("The food was delicious and the waiter...")[0],
        atol=1e-6,
    )


def test_batch_base64_default_and_float_equal_in_process(client, embedder, short_texts):
    texts = short_texts[:40]
    default = client.embeddings.create(model=MODEL, input=texts)  # the client sends base64
    floats = client.embeddings.create(model=MODEL, input=texts, encoding_format="float")
    assert [d.index for d in default.data] == list(range(40))
    # Both encodings carry the same float32 values, bit for bit.
    np.testing.assert_array_equal(_vectors(default), _vectors(floats))
    np.testing.assert_allclose(_vectors(default), embedder.embed(texts), atol=1e-6)
    assert default.usage.prompt_tokens == sum(len(t) for t in embedder.tokenize(texts))


def test_raw_base64_is_little_endian_float32(server, embedder):
    import base64

    body = httpx.post(
        server.url + "/v1/embeddings",
        json={"input": ["bits"], "model": MODEL, "encoding_format": "base64"},
    ).json()
    decoded = np.frombuffer(base64.b64decode(body["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_array_equal(decoded, embedder.embed(["bits"])[0])


def test_semantic_similarity_ordering(client):
    cat, feline, weather = _vectors(
        client.embeddings.create(
            model=MODEL,
            input=[
                "The cat sleeps on the sofa.",
                "A feline naps on the couch.",
                "Tomorrow will be rainy and cold.",
            ],
        )
    )
    assert cat @ feline > cat @ weather + 0.3


def test_rag_top1(client):
    docs = [
        "The Eiffel Tower is in Paris, France.",
        "Photosynthesis converts light energy into chemical energy in plants.",
        "The Python programming language was created by Guido van Rossum.",
        "Mount Everest is the highest mountain above sea level.",
    ]
    questions = {
        "Who designed Python?": 2,
        "How do plants make energy from sunlight?": 1,
        "What is the tallest mountain on Earth?": 3,
        "Which city has the Eiffel Tower?": 0,
    }
    doc_vecs = _vectors(client.embeddings.create(model=MODEL, input=docs))
    q_vecs = _vectors(client.embeddings.create(model=MODEL, input=list(questions)))
    assert (q_vecs @ doc_vecs.T).argmax(1).tolist() == list(questions.values())


def test_kmeans_clusters_by_topic(client):
    from sklearn.cluster import KMeans

    animals = [
        "Dogs are loyal pets.",
        "Cats like to sleep.",
        "Horses run in the field.",
        "Parrots can mimic speech.",
    ]
    finance = [
        "Stocks fell sharply today.",
        "The central bank raised interest rates.",
        "Bond yields are climbing.",
        "Investors sold their shares.",
    ]
    vecs = _vectors(client.embeddings.create(model=MODEL, input=animals + finance))
    labels = KMeans(n_clusters=2, n_init=10, random_state=0).fit_predict(vecs)
    assert len(set(labels[:4])) == 1 and len(set(labels[4:])) == 1 and labels[0] != labels[4]


def test_dimensions(client, embedder):
    response = client.embeddings.create(model=MODEL, input="matryoshka", dimensions=128)
    v = _vectors(response)[0]
    assert v.shape == (128,)
    np.testing.assert_allclose(v, embedder.embed("matryoshka", dimensions=128)[0], atol=1e-6)


def test_token_id_input_equals_text(client, embedder):
    texts = ["token ids in", "and another, somewhat longer, input text"]
    ids = [t.tolist() for t in embedder.tokenize(texts)]
    by_text = _vectors(client.embeddings.create(model=MODEL, input=texts))
    # Same inputs; only the bucket may differ (batch invariance bound: 1e-6).
    np.testing.assert_allclose(
        _vectors(client.embeddings.create(model=MODEL, input=ids)), by_text, atol=1e-6
    )
    np.testing.assert_allclose(
        _vectors(client.embeddings.create(model=MODEL, input=ids[0]))[0], by_text[0], atol=1e-6
    )


def test_token_ids_outside_vocabulary_are_a_400(client):
    with pytest.raises(openai.BadRequestError, match="outside the vocabulary"):
        client.embeddings.create(model=MODEL, input=[[101, 999999, 102]])


def test_served_aliases(client):
    for name in ("sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2"):
        assert client.embeddings.create(model=name, input="alias").model == name
    assert {m.id for m in client.models.list()} >= {MODEL, "all-MiniLM-L6-v2"}


def test_64_concurrent_clients_get_their_own_results(server, client, embedder, corpus):
    texts = [f"{i}: {t}" for i, t in enumerate(corpus[:64])]
    expected = embedder.embed(texts, truncate=True)

    def one(i: int) -> np.ndarray:
        response = client.embeddings.create(
            model=MODEL, input=texts[i], extra_body={"truncate": True}
        )
        return _vectors(response)[0]

    with concurrent.futures.ThreadPoolExecutor(64) as pool:
        results = list(pool.map(one, range(64)))
    assert np.abs(np.stack(results) - expected).max() <= 1e-6

    metrics = httpx.get(server.url + "/metrics").text
    # Histogram buckets are cumulative: batches with at most one request < all batches.
    one_request = float(
        re.search(r'jaxembed_batch_requests_bucket\{le="1.0",model="[^"]+"\} (\S+)', metrics).group(
            1
        )
    )
    total = float(re.search(r"jaxembed_batch_requests_count\{[^}]*\} (\S+)", metrics).group(1))
    assert one_request < total, "no batch ever held more than one request"


def test_all_padding_token_ids_give_finite_unit_vectors(client):
    v = _vectors(client.embeddings.create(model=MODEL, input=[[0, 0, 0], [102]]))
    assert np.isfinite(v).all()
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
