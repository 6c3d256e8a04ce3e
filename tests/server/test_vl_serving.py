"""GME-Qwen2-VL through a real server with the openai client: text, image (data URI and a URL
from a local server with --allow-private-media), text+image items equal in process; bad media
get CLIP's 400 codes; concurrent mixed requests stay correct."""

from __future__ import annotations

import base64
import concurrent.futures

import httpx
import numpy as np
import pytest
from openai import OpenAI

from jaxembed.engine.embedder import Embedder
from jaxembed.engine.jobs import EmbedItem
from tests.helpers import (
    MediaHTTPServer,
    ServerProcess,
    bomb_png,
    generated_image,
    image_bytes,
    save_tiny_qwen2_vl,
)

CAT = image_bytes(generated_image((90, 60), seed=4))
DOG = image_bytes(generated_image((40, 70), seed=5))


@pytest.fixture(scope="module")
def gme_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-gme")
    save_tiny_qwen2_vl(path, seed=9)
    return path


@pytest.fixture(scope="module")
def http_media():
    with MediaHTTPServer({"dog.png": DOG}) as server:
        yield server


@pytest.fixture(scope="module")
def server(gme_dir):
    proc = ServerProcess(
        "--model", f"gme={gme_dir}", "--allow-private-media", "--seq-lengths", "32"
    )
    yield proc
    assert proc.stop() == 0, proc.log()


@pytest.fixture(scope="module")
def expected(gme_dir):
    embedder = Embedder.from_pretrained(gme_dir, compile_cache_dir=False)
    try:
        items = [
            EmbedItem(text="a cat on a mat"),
            EmbedItem(image=CAT),
            EmbedItem(text="a dog", image=DOG),
        ]
        yield embedder.embed_items(items)
    finally:
        embedder.close()


def _uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def _vectors(response) -> np.ndarray:
    return np.array([d.embedding for d in response.data], dtype=np.float32)


def test_items_through_the_openai_client_equal_in_process(server, http_media, expected):
    client = OpenAI(base_url=server.url + "/v1", api_key="EMPTY", max_retries=0, timeout=120)
    items = [
        {"text": "a cat on a mat"},
        {"image": _uri(CAT)},
        {"text": "a dog", "image": f"{http_media.url}/files/dog.png"},
    ]
    got = client.embeddings.create(model="gme", input=items)
    np.testing.assert_allclose(_vectors(got), expected, atol=1e-5)
    plain = client.embeddings.create(model="gme", input="a cat on a mat")
    np.testing.assert_allclose(_vectors(plain)[0], expected[0], atol=1e-5)
    assert got.usage.prompt_tokens > plain.usage.prompt_tokens

    def one(i: int) -> np.ndarray:
        return _vectors(client.embeddings.create(model="gme", input=[items[i % 3]]))[0]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        for i, vector in enumerate(pool.map(one, range(8))):
            np.testing.assert_allclose(vector, expected[i % 3], atol=1e-5)


def test_bad_media_and_unsupported_items_are_400s(server):
    b64 = lambda data: base64.b64encode(data).decode()  # noqa: E731
    for item, code in (
        ({"image": "data:image/png;base64," + b64(bomb_png(100_000, 100_000))}, "invalid_image"),
        ({"image": "data:image/png;base64," + b64(b"<html>not an image</html>")}, "invalid_image"),
        ({"image": "file:///etc/passwd"}, "media_forbidden"),
        ({"video": b64(b"not a video")}, "unsupported_modality"),
    ):
        body = {"model": "gme", "input": [{"text": "ok"}, item]}
        response = httpx.post(server.url + "/v1/embeddings", json=body, timeout=60)
        assert response.status_code == 400, (item, response.text)
        error = response.json()["error"]
        assert error["code"] == code, (item, error)
        assert error["message"].startswith("input[1]"), error
    ok = httpx.post(server.url + "/v1/embeddings", json={"model": "gme", "input": "still fine"})
    assert ok.status_code == 200
