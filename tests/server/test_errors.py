"""Every error path of /v1/embeddings: status code and the OpenAI error body, never a 5xx or a hang."""

from __future__ import annotations

import httpx
import pytest

from tests.server.conftest import POISON_TOKEN

MODEL = "all-minilm-l6-v2"


def post(server, body=None, *, content=None, path="/v1/embeddings", headers=None):
    kwargs = {"content": content} if content is not None else {"json": body}
    return httpx.post(server.url + path, timeout=60, headers=headers, **kwargs)


def assert_error(
    response: httpx.Response, status: int, *, param=..., code=..., match: str | None = None
):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert (
        error["type"] == ("invalid_request_error" if status < 500 else "server_error")
        or status == 401
    )
    if param is not ...:
        assert error["param"] == param
    if code is not ...:
        assert error["code"] == code
    if match:
        assert match in error["message"], error["message"]
    assert "Traceback" not in error["message"] and "/work/" not in error["message"]


@pytest.mark.parametrize(
    "body, param, match",
    [
        ({"model": MODEL}, "input", "'input' is required"),
        ({"input": 5, "model": MODEL}, "input", "must be a string"),
        ({"input": {"a": 1}, "model": MODEL}, "input", "must be a string"),
        ({"input": [1.5], "model": MODEL}, "input", "must be a string"),
        ({"input": [[1, "a"]], "model": MODEL}, "input", "input[0][1]"),
        ({"input": [["deep", ["nested"]]], "model": MODEL}, "input", "input[0][0]"),
        ({"input": [None], "model": MODEL}, "input", "must be a string"),
        ({"input": ["ok", 3], "model": MODEL}, "input", "input[1]: Input should be a valid string"),
        ({"input": [True], "model": MODEL}, "input", "must be a string"),
        ({"input": [], "model": MODEL}, "input", "must not be empty"),
        ({"input": "", "model": MODEL}, "input", "empty"),
        ({"input": ["fine", "   "], "model": MODEL}, "input", "input[1] is empty"),
        ({"input": [[]], "model": MODEL}, "input", "empty list of token ids"),
        (
            {"input": "x", "model": MODEL, "encoding_format": "int8"},
            "encoding_format",
            "encoding_format",
        ),
        ({"input": "x", "model": MODEL, "dimensions": 0}, "dimensions", "dimensions=0"),
        ({"input": "x", "model": MODEL, "dimensions": 385}, "dimensions", "between 1 and 384"),
        ({"input": "x", "model": MODEL, "dimensions": "12"}, "dimensions", "dimensions"),
        ({"input": "x", "model": MODEL, "priority": "high"}, "priority", "priority"),
        ({"input": "x", "model": MODEL, "priority": 2**40}, "priority", "priority"),
        ({"input": "x", "model": MODEL, "truncate": "yes"}, "truncate", "truncate"),
        (
            {"input": "x", "model": MODEL, "truncation_direction": "middle"},
            "truncation_direction",
            None,
        ),
        ({"input": "x", "model": 7}, "model", "model"),
        ({"input": [[101, -5, 102]], "model": MODEL}, "input", "outside the vocabulary"),
        (
            {"input": [{"image": "data:image/png;base64,AAAA"}], "model": MODEL},
            "input",
            "only embeds text",
        ),
        ({"input": [{"text": "a", "colour": "red"}], "model": MODEL}, "input", None),
        ({"input": [{}], "model": MODEL}, "input", None),
        (
            {"input": "x", "model": MODEL, "instruction": "find things"},
            "instruction",
            "takes no instructions",
        ),
        (  # found by schemathesis: token ids used to skip the instruction check
            {"input": [101, 2023, 102], "model": MODEL, "instruction": ""},
            "instruction",
            "takes no instructions",
        ),
        ({"input": "x", "model": MODEL, "input_type": "passage"}, "input_type", None),
    ],
)
def test_invalid_requests_are_400(server, body, param, match):
    assert_error(post(server, body), 400, param=param, match=match)


def test_unknown_model_is_404(server):
    assert_error(
        post(server, {"input": "x", "model": "gpt-9"}), 404, param="model", code="model_not_found"
    )


def test_lora_is_not_enabled(server):
    r = post(server, {"input": "x", "model": f"{MODEL}:my-adapter"})
    assert_error(r, 400, param="model", code="lora_not_enabled", match="LoRA is not enabled")
    r = post(server, {"input": "x", "model": MODEL, "lora_path": "adapters/a"})
    assert_error(r, 400, param="lora_path", code="lora_not_enabled")


@pytest.mark.parametrize(
    "content, match",
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b"", "not valid JSON"),
        (b'{"input": NaN, "model": "x"}', "not valid JSON"),
        (b'"just a string"', "JSON object"),
        (b"\xff\xfe\x00garbage", "not valid JSON"),
        (b'{"input": ' + b"[" * 5000 + b"]" * 5000 + b"}", "deeper than 1024 levels"),
    ],
)
def test_malformed_bodies_are_400(server, content, match):
    assert_error(
        post(server, content=content, headers={"content-type": "application/json"}),
        400,
        match=match,
    )


@pytest.mark.parametrize(
    "value, match",
    [
        ([101, 7592.5, 102], "input[1]: Input should be a valid integer (got 7592.5)"),
        (["a", 101], "input[1]: Input should be a valid string (got 101)"),
        ([[101, 102], [101, "x"]], "input[1][1]"),
        ([{"text": "a", "imgae": "x"}], "input[0].imgae"),
    ],
)
def test_a_mixed_input_list_names_its_bad_element(server, value, match):
    assert_error(post(server, {"input": value, "model": MODEL}), 400, param="input", match=match)


def test_whole_number_floats_are_numbers(server):
    r = post(server, {"input": "x", "model": MODEL, "dimensions": 64.0})
    assert r.status_code == 200 and len(r.json()["data"][0]["embedding"]) == 64
    assert_error(post(server, {"input": "x", "model": MODEL, "dimensions": 64.5}), 400)


def test_over_long_input_states_tokens_and_limit(server):
    r = post(server, {"input": ["short", "word " * 400], "model": MODEL})
    assert_error(
        r, 400, param="input", code="context_length_exceeded", match="input[1] has 402 tokens"
    )
    assert "maximum of 256" in r.json()["error"]["message"]


def test_truncate_extension(server):
    r = post(server, {"input": "word " * 400, "model": MODEL, "truncate": True})
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == 256
    r = post(
        server,
        {"input": "word " * 400, "model": MODEL, "truncate": True, "truncation_direction": "left"},
    )
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == 256


def test_multimodal_text_items_are_embedded_as_text(server):
    r = post(server, {"input": [{"text": "a text item"}, {"text": "another"}], "model": MODEL})
    assert r.status_code == 200 and [d["index"] for d in r.json()["data"]] == [0, 1]


def test_too_many_inputs(server):
    assert_error(
        post(server, {"input": ["a"] * 2049, "model": MODEL}),
        400,
        param="input",
        match="maximum is 2048",
    )


def test_huge_body_is_413(server):
    r = post(
        server,
        content=b'{"input": "' + b"a" * (9 * 2**20) + b'"}',
        headers={"content-type": "application/json"},
    )
    assert_error(r, 413, code="request_too_large")


def test_unknown_route_and_method(server):
    assert_error(httpx.get(server.url + "/v2/nothing"), 404, code="not_found")
    assert_error(httpx.put(server.url + "/v1/embeddings"), 405, code="method_not_allowed")


def test_unknown_fields_are_refused_naming_them(server):
    r = post(server, {"input": "x", "model": MODEL, "user": "alice", "some_future_field": {"a": 1}})
    assert_error(r, 400, param="some_future_field", code="unknown_field")
    assert "some_future_field" in r.json()["error"]["message"]


def test_engine_failure_is_a_500_for_that_request_only(server):
    import concurrent.futures

    bodies = [{"input": [[101, POISON_TOKEN, 102]], "model": MODEL}] + [
        {"input": f"healthy request {i}", "model": MODEL} for i in range(12)
    ]
    with concurrent.futures.ThreadPoolExecutor(13) as pool:
        responses = list(pool.map(lambda b: post(server, b), bodies))
    assert_error(responses[0], 500, code="engine_error")
    assert [r.status_code for r in responses[1:]] == [200] * 12
    assert post(server, {"input": "after the fault", "model": MODEL}).status_code == 200
