"""API keys: every route but /health and /ready needs `Authorization: Bearer <key>`."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.helpers import ServerProcess


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory):
    key_file = tmp_path_factory.mktemp("keys") / "keys.txt"
    key_file.write_text("from-file-key\n\n")
    proc = ServerProcess(
        "--api-key",
        "cli-key",
        "--api-key-file",
        str(key_file),
        "--no-warmup",
        env={"JAXEMBED_API_KEY": "env-key-1,env-key-2"},
    )
    yield proc
    assert proc.stop() == 0


@pytest.mark.parametrize("key", ["cli-key", "from-file-key", "env-key-1", "env-key-2"])
def test_every_key_source_works(keyed_server, key):
    r = httpx.post(
        keyed_server.url + "/v1/embeddings",
        json={"input": "x"},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert r.status_code == 200


@pytest.mark.parametrize(
    "header",
    [None, "Bearer wrong", "Bearer", "Basic cli-key", "cli-key", "Bearer cli-key-and-more"],
)
def test_missing_or_wrong_key_is_401(keyed_server, header):
    headers = {"Authorization": header} if header else {}
    for method, path in [
        ("post", "/v1/embeddings"),
        ("get", "/v1/models"),
        ("get", "/metrics"),
        ("post", "/tokenize"),
        ("post", "/v1/rerank"),
    ]:
        r = httpx.request(method, keyed_server.url + path, json={"input": "x"}, headers=headers)
        assert r.status_code == 401, (path, r.text)
        error = r.json()["error"]
        assert error["type"] == "authentication_error" and error["code"] == "invalid_api_key"
        assert "cli-key" not in error["message"]


def test_health_ready_and_docs_are_open(keyed_server):
    """Probes, the API docs page and its OpenAPI document need no key (a browser cannot
    send one to load a page); every operation still does (test above)."""
    for path in ("/health", "/ready", "/docs", "/openapi.json"):
        assert httpx.get(keyed_server.url + path).status_code == 200, path


def test_openai_client_with_key(keyed_server):
    good = openai.OpenAI(base_url=keyed_server.url + "/v1", api_key="cli-key", max_retries=0)
    assert (
        len(good.embeddings.create(model="all-minilm-l6-v2", input="hi").data[0].embedding) == 384
    )
    bad = openai.OpenAI(base_url=keyed_server.url + "/v1", api_key="EMPTY", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.embeddings.create(model="all-minilm-l6-v2", input="hi")
