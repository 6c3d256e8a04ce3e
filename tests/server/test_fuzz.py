"""Property-based fuzzing of the request schema against the real server: never a 5xx, never a hang."""

from __future__ import annotations

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

MODEL = "all-minilm-l6-v2"

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=20,
)
# Ids in and around the vocabulary, and far past any machine width (2^63 and beyond).
token_ids = st.integers(min_value=-5, max_value=40000) | st.integers(-(2**70), 2**70)
inputs = st.one_of(
    json_values,
    st.text(max_size=200),
    st.lists(st.text(max_size=60), max_size=8),
    st.lists(token_ids, max_size=20),
    st.lists(st.lists(token_ids, max_size=10), max_size=4),
    st.lists(
        st.fixed_dictionaries({}, optional={"text": scalars, "image": scalars, "video": scalars}),
        max_size=3,
    ),
)
requests = st.fixed_dictionaries(
    {"input": inputs},
    optional={
        "model": st.sampled_from([MODEL, "nope", f"{MODEL}:x", "", None, 3]),
        "encoding_format": st.sampled_from(["float", "base64", "int8", None, 1]),
        "dimensions": st.one_of(st.integers(-3, 500), st.none(), st.text(max_size=3)),
        "priority": st.one_of(st.integers(-(2**40), 2**40), st.text(max_size=3)),
        "truncate": st.one_of(st.booleans(), st.integers(0, 1)),
        "truncation_direction": st.sampled_from(["left", "right", "up"]),
        "input_type": st.sampled_from(["query", "document", "passage", None]),
        "instruction": scalars,
        "user": scalars,
        "lora_path": scalars,
    },
)


def _check(response: httpx.Response) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:500])
    body = response.json()
    if response.status_code >= 400:
        assert set(body["error"]) == {"message", "type", "param", "code"}
    else:
        assert body["object"] == "list" and len(body["data"]) >= 1


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=requests)
def test_structured_requests_never_5xx(http, body):
    _check(http.post("/v1/embeddings", json=body))


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    raw=st.binary(max_size=300)
    | json_values.map(lambda v: httpx.Request("POST", "/", json=v).content)
)
def test_arbitrary_bodies_never_5xx(http, raw):
    _check(http.post("/v1/embeddings", content=raw, headers={"content-type": "application/json"}))


EXTREME_IDS = [2**63, 2**64, -(2**63) - 1, 2**70, -1, 30522]


@pytest.mark.parametrize("bad", EXTREME_IDS)
def test_token_ids_past_any_width_are_the_400_of_any_unknown_id(http, bad):
    for path in ("/v1/embeddings", "/embeddings"):
        r = http.post(path, json={"model": MODEL, "input": [[101, bad, 102]]})
        assert r.status_code == 400 and "outside the vocabulary" in r.json()["error"]["message"]
    r = http.post("/detokenize", json={"model": MODEL, "tokens": [bad]})
    assert r.status_code == 400 and "outside the vocabulary" in r.json()["error"]["message"]
