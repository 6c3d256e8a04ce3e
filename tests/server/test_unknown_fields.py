"""A field no API defines is a 400 naming it on every route, in that route's shape; the
fields peers' real clients send stay accepted (their suites run elsewhere against the same
server); --allow-unknown-fields is tested in test_logging (its line and header)."""

from __future__ import annotations

import httpx
import pytest

from jaxembed_server.fields import known_fields
from jaxembed_server.protocol import EmbeddingRequest
from jaxembed_server.vllm_fields import REFUSED_VLLM_FIELDS

TYPOS = [
    ("/v1/embeddings", {"input": "hi", "dimension": 64}, "dimension", "dimensions"),
    ("/embeddings", {"input": "hi", "encodingformat": "float"}, "encodingformat", None),
    ("/v2/embed", {"texts": ["hi"], "embedding_type": ["float"]}, "embedding_type", None),
    ("/embed", {"inputs": "hi", "truncat": True}, "truncat", "truncate"),
    ("/v1/rerank", {"query": "q", "documents": ["d"], "topn": 1}, "topn", "top_n"),
    ("/tokenize", {"input": "hi", "add_special_token": False}, "add_special_token", None),
]


def _message(route: str, body: dict) -> str:
    if route in ("/v1/embeddings", "/embeddings", "/tokenize"):
        return body["error"]["message"]
    if route in ("/v2/embed", "/v1/rerank"):
        return body["message"]  # Cohere's shape
    return body["error"]  # TEI's shape


@pytest.mark.parametrize(("route", "body", "field", "meant"), TYPOS)
def test_a_misspelled_field_is_a_400_naming_it(server, route, body, field, meant):
    r = httpx.post(server.url + route, json=body, timeout=30)
    assert r.status_code == 400, r.text
    message = _message(route, r.json())
    assert f"Unrecognized request argument supplied: {field}" in message
    if meant:
        assert f"did you mean '{meant}'" in message
    if route in ("/v1/embeddings", "/embeddings"):
        assert r.json()["error"]["param"] == field
        assert r.json()["error"]["code"] == "unknown_field"


def test_the_vllm_fields_checked_by_value_are_known():
    assert set(REFUSED_VLLM_FIELDS) <= known_fields(EmbeddingRequest)
