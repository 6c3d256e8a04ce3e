"""Rerank and score through a real server that also embeds: Cohere/Jina, TEI and vLLM shapes
agree with each other and with the in-process Reranker; the cohere SDK; bad input; fuzzing."""

from __future__ import annotations

import re

import cohere
import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxembed.api import Reranker
from jaxembed.engine.request.jobs import ScoreOptions
from tests.helpers import ServerProcess, save_tiny_cross_encoder
from tests.texts import passages

QUERY = "how are embeddings served on accelerators"
# 200 prose snippets short enough to fit beside the query in the tiny model's 128 tokens.
DOCUMENTS = [d for d in (" ".join(p.split()[:30]) for p in passages(400)) if len(d) < 220][:200]
MAX_INPUTS = 250


@pytest.fixture(scope="module")
def reranker_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-cross-encoder")
    save_tiny_cross_encoder("bert", path, seed=9)
    return path


@pytest.fixture(scope="module")
def server(reranker_dir):
    proc = ServerProcess(
        "--model",
        "all-minilm-l6-v2",
        "--model",
        f"rr={reranker_dir}",
        "--max-inputs",
        str(MAX_INPUTS),
        "--seq-lengths",
        "32,64,128",
    )
    yield proc
    assert proc.stop() == 0, proc.log()


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def in_process(reranker_dir):
    reranker = Reranker.from_pretrained(reranker_dir, compile_cache_dir=False)
    yield reranker
    reranker.close()


def _inputs_counted(http, model: str) -> float:
    text = http.get("/metrics").text
    match = re.search(rf'^jaxembed_inputs_total{{model="{model}"}} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


def test_rerank_tei_and_score_agree(http, in_process):
    before = _inputs_counted(http, "rr")
    cohere_shape = http.post(
        "/v1/rerank",
        json={"query": QUERY, "documents": DOCUMENTS, "top_n": 10, "return_documents": True},
    )
    tei_shape = http.post("/rerank", json={"query": QUERY, "texts": DOCUMENTS, "return_text": True})
    vllm_shape = http.post("/v1/score", json={"text_1": QUERY, "text_2": DOCUMENTS})
    assert [r.status_code for r in (cohere_shape, tei_shape, vllm_shape)] == [200, 200, 200]
    scores = np.asarray([d["score"] for d in vllm_shape.json()["data"]])
    assert [d["index"] for d in vllm_shape.json()["data"]] == list(range(200))
    np.testing.assert_allclose(scores, in_process.score(QUERY, DOCUMENTS), atol=1e-6)

    order = list(np.argsort(-scores, kind="stable"))
    body = cohere_shape.json()
    assert body["model"] == "rr" and len(body["results"]) == 10
    assert [r["index"] for r in body["results"]] == order[:10]
    for r in body["results"]:
        assert r["relevance_score"] == scores[r["index"]]
        assert r["document"] == {"text": DOCUMENTS[r["index"]]}
    tei = tei_shape.json()
    assert [r["index"] for r in tei] == order
    assert all(r["score"] == scores[r["index"]] and r["text"] == DOCUMENTS[r["index"]] for r in tei)

    pairs = in_process.engine.pairs.encode([(QUERY, d) for d in DOCUMENTS], ScoreOptions())
    tokens = sum(len(p) for p in pairs)
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
    assert vllm_shape.json()["usage"]["prompt_tokens"] == tokens
    assert _inputs_counted(http, "rr") - before == 600
    # The same process still embeds with its embedding model.
    embedded = http.post("/v1/embeddings", json={"input": "still embedding"}).json()
    assert embedded["model"] == "all-minilm-l6-v2" and len(embedded["data"][0]["embedding"]) == 384


def test_cohere_sdk_v1_and_v2(server, http):
    documents = DOCUMENTS[:20]
    want = [
        d["score"]
        for d in http.post("/score", json={"queries": QUERY, "documents": documents}).json()["data"]
    ]
    v2 = cohere.ClientV2(base_url=server.url, api_key="unused")
    ranked = v2.rerank(model="rr", query=QUERY, documents=documents, top_n=5)
    assert [r.index for r in ranked.results] == list(
        np.argsort(-np.asarray(want), kind="stable")[:5]
    )
    assert [r.relevance_score for r in ranked.results] == [want[r.index] for r in ranked.results]
    v1 = cohere.Client(base_url=server.url, api_key="unused")
    old = v1.rerank(model="rr", query=QUERY, documents=documents, return_documents=True)
    assert (
        len(old.results) == 20 and old.results[0].document.text == documents[old.results[0].index]
    )
    with pytest.raises(cohere.core.ApiError) as refused:
        v2.rerank(model="all-minilm-l6-v2", query=QUERY, documents=documents)
    assert refused.value.status_code == 400 and "rr" in refused.value.body["message"]


def test_pairwise_scores_and_truncation(http, in_process):
    queries = ["what is a dog", "how do planes fly"]
    documents = ["a dog barks", "lift under the wings"]
    both = http.post("/v1/score", json={"text_1": queries, "text_2": documents}).json()
    got = [d["score"] for d in both["data"]]
    np.testing.assert_allclose(
        got, in_process.predict(list(zip(queries, documents, strict=True))), atol=1e-6
    )
    long = "a very long document " * 100
    refused = http.post("/v1/score", json={"text_1": "q", "text_2": [long]})
    assert (
        refused.status_code == 400 and refused.json()["error"]["code"] == "context_length_exceeded"
    )
    cut = http.post(
        "/v1/score", json={"text_1": "q", "text_2": [long], "truncate_prompt_tokens": 64}
    )
    assert cut.status_code == 200 and cut.json()["usage"]["prompt_tokens"] == 64
    assert http.post("/v1/rerank", json={"query": "q", "documents": [long]}).status_code == 200
    tei = http.post("/rerank", json={"query": "q", "texts": [long]})
    assert tei.status_code == 413 and tei.json()["error_type"] == "validation"
    capped = http.post(
        "/v1/rerank", json={"query": "q", "documents": [long], "max_tokens_per_doc": 5}
    ).json()
    assert capped["usage"]["prompt_tokens"] == 1 + 3 + 5  # q, three special tokens, 5 of the doc


def _cohere_error(response: httpx.Response) -> str:
    body = response.json()
    assert set(body) == {"id", "message"}, body
    return body["message"]


@pytest.mark.parametrize(
    "body, fragment",
    [
        ({"query": "q", "documents": []}, "documents"),
        ({"query": "q", "documents": ["a"], "top_n": 0}, "top_n"),
        ({"query": "q", "documents": ["a"], "top_n": -3}, "top_n"),
        ({"documents": ["a"]}, "query"),
        ({"query": "   ", "documents": ["a"]}, "query"),
        ({"query": "q", "documents": ["a"], "model": "all-minilm-l6-v2"}, "rerank: ['rr']"),
        ({"query": "q", "documents": ["a"], "model": "nope"}, "nope"),
        ({"query": "q", "documents": ["a"] * (MAX_INPUTS + 1)}, "maximum"),
        ({"query": "q", "documents": [3]}, "documents"),
        ({"query": "q", "documents": ["a"], "instruction": "judge"}, "instruction"),
    ],
)
def test_bad_rerank_requests_are_400s_in_cohere_shape(http, body, fragment):
    response = http.post("/v2/rerank", json=body)
    assert response.status_code in (400, 404), response.text
    assert fragment in _cohere_error(response)


def test_bad_requests_on_tei_and_vllm_shapes(http):
    empty = http.post("/rerank", json={"query": "q", "texts": []})
    assert empty.status_code == 400 and empty.json()["error_type"] == "empty"
    wrong_type = http.post("/rerank", json={"query": 3, "texts": ["a"]})
    assert wrong_type.status_code == 422 and wrong_type.json()["error_type"] == "validation"
    mismatched = http.post("/v1/score", json={"text_1": ["a", "b"], "text_2": ["c", "d", "e"]})
    assert mismatched.status_code == 400 and mismatched.json()["error"]["param"] == "text_1"
    none = http.post("/v1/score", json={"text_1": "a"})
    assert none.status_code == 400 and "text_2" in none.json()["error"]["message"]
    embedder = http.post(
        "/v1/score", json={"model": "all-minilm-l6-v2", "text_1": "a", "text_2": "b"}
    )
    assert embedder.status_code == 400 and embedder.json()["error"]["code"] == "wrong_model_kind"
    reranker = http.post("/v1/embeddings", json={"model": "rr", "input": "a"})
    assert reranker.status_code == 400 and "reranker" in reranker.json()["error"]["message"]
    not_json = http.post("/rerank", content=b"{", headers={"content-type": "application/json"})
    assert not_json.status_code == 400 and "JSON" in _cohere_error(not_json)


texts = st.one_of(
    st.text(max_size=30), st.integers(), st.none(), st.lists(st.text(max_size=20), max_size=4)
)
bodies = st.fixed_dictionaries(
    {},
    optional={
        "query": texts,
        "documents": st.one_of(
            texts,
            st.lists(
                st.one_of(st.text(max_size=30), st.fixed_dictionaries({"text": texts})), max_size=5
            ),
        ),
        "texts": texts,
        "text_1": texts,
        "text_2": texts,
        "top_n": st.one_of(st.integers(-2, 8), st.text(max_size=2)),
        "model": st.sampled_from(["rr", "all-minilm-l6-v2", "x", None]),
        "raw_scores": st.one_of(st.booleans(), st.integers(0, 2)),
        "truncate": st.one_of(st.booleans(), st.none()),
        "truncate_prompt_tokens": st.one_of(st.integers(-3, 40), st.none()),
        "max_tokens_per_doc": st.one_of(st.integers(-1, 10), st.none()),
        "instruction": st.one_of(st.none(), st.text(max_size=5)),
    },
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=bodies, path=st.sampled_from(["/v1/rerank", "/rerank", "/v1/score"]))
def test_fuzzed_scoring_routes_never_5xx(http, body, path):
    response = http.post(path, json=body)
    assert response.status_code < 500, (path, body, response.text[:300])
    if response.status_code >= 400:
        answer = response.json()
        assert answer.get("error") or answer.get("message"), answer
