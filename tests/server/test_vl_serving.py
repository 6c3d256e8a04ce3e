"""GME-Qwen2-VL and Qwen3-VL-Embedding in one real server with the openai client: text, image
(data URI and a URL from a local server with --allow-private-media), text+image and (Qwen3)
video items equal in process — and an encoded video in process equals the published recipe on
its decoded frames; bad media get CLIP's 400 codes; concurrent mixed requests stay correct."""

from __future__ import annotations

import base64
import concurrent.futures

import httpx
import numpy as np
import pytest
from openai import OpenAI

from jaxembed.api import Embedder
from jaxembed.engine.request.jobs import EmbedItem
from tests.helpers import (
    MediaHTTPServer,
    ServerProcess,
    bomb_png,
    generated_image,
    generated_video,
    image_bytes,
    qwen3_vl_embedding_reference,
    save_tiny_qwen2_vl,
    save_tiny_qwen3_vl,
)

CAT = image_bytes(generated_image((90, 60), seed=4))
DOG = image_bytes(generated_image((40, 70), seed=5))
CLIP = generated_video(12, size=(48, 32), fps=6)


@pytest.fixture(scope="module")
def gme_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-gme")
    save_tiny_qwen2_vl(path, seed=9)
    return path


@pytest.fixture(scope="module")
def qwen3_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-qwen3-vl")
    return save_tiny_qwen3_vl(path, seed=3), path


@pytest.fixture(scope="module")
def http_media():
    with MediaHTTPServer({"dog.png": DOG, "clip.mp4": CLIP}) as server:
        yield server


@pytest.fixture(scope="module")
def server(gme_dir, qwen3_dir):
    proc = ServerProcess(
        "--model", f"gme={gme_dir}", "--model", f"q3={qwen3_dir[1]}",
        "--allow-private-media", "--seq-lengths", "32",
    )  # fmt: skip
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


QWEN3_ITEMS = [
    EmbedItem(text="a cat on a mat"),
    EmbedItem(image=CAT),
    EmbedItem(text="a dog", image=DOG),
    EmbedItem(video=CLIP),
    EmbedItem(text="a moving bar", video=CLIP),
]


@pytest.fixture(scope="module")
def qwen3_expected(qwen3_dir):
    import io

    import av
    from PIL import Image

    model, path = qwen3_dir
    embedder = Embedder.from_pretrained(path, compile_cache_dir=False)
    try:
        vectors = embedder.embed_items(QWEN3_ITEMS)
    finally:
        embedder.close()
    with av.open(io.BytesIO(CLIP)) as container:  # every frame, as a video reader gives them
        fps = float(container.streams.video[0].average_rate)
        frames = [f.to_image() for f in container.decode(video=0)]
    specs = [
        {"text": "a cat on a mat"},
        {"image": Image.open(io.BytesIO(CAT))},
        {"text": "a dog", "image": Image.open(io.BytesIO(DOG))},
        {"video": (frames, fps)},
        {"text": "a moving bar", "video": (frames, fps)},
    ]
    want, _ = qwen3_vl_embedding_reference(model, path, specs)
    assert np.sum(vectors * want, axis=1).min() >= 0.99999
    return vectors


def _video_uri(data: bytes) -> str:
    return "data:video/mp4;base64," + base64.b64encode(data).decode()


def test_qwen3_items_and_video_through_the_openai_client(server, http_media, qwen3_expected):
    client = OpenAI(base_url=server.url + "/v1", api_key="EMPTY", max_retries=0, timeout=120)
    items = [
        {"text": "a cat on a mat"},
        {"image": _uri(CAT)},
        {"text": "a dog", "image": f"{http_media.url}/files/dog.png"},
        {"video": _video_uri(CLIP)},
        {"text": "a moving bar", "video": f"{http_media.url}/files/clip.mp4"},
    ]
    got = client.embeddings.create(model="q3", input=items)
    np.testing.assert_allclose(_vectors(got), qwen3_expected, atol=1e-5)

    def one(i: int) -> np.ndarray:  # 16 concurrent requests over both models
        model, k = ("q3", i % 5) if i % 2 else ("gme", None)
        if model == "gme":
            return _vectors(client.embeddings.create(model="gme", input="a cat on a mat"))[0]
        return _vectors(client.embeddings.create(model="q3", input=[items[k]]))[0]

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        vectors = list(pool.map(one, range(16)))
    gme_text = _vectors(client.embeddings.create(model="gme", input="a cat on a mat"))[0]
    for i, vector in enumerate(vectors):
        want = qwen3_expected[i % 5] if i % 2 else gme_text
        np.testing.assert_allclose(vector, want, atol=1e-5)


def test_qwen3_bad_videos_are_400s(server):
    for item, code in (
        ({"video": _video_uri(b"not a video")}, "invalid_video"),
        ({"video": _video_uri(image_bytes(generated_image((32, 32))))}, "invalid_video"),
    ):
        body = {"model": "q3", "input": [{"text": "ok"}, item]}
        response = httpx.post(server.url + "/v1/embeddings", json=body, timeout=60)
        assert response.status_code == 400, (item, response.text)
        assert response.json()["error"]["code"] == code, response.text
    long = {"model": "q3", "input": [{"text": "word " * 9000}], "truncate": True}
    response = httpx.post(server.url + "/v1/embeddings", json=long, timeout=60)
    assert response.status_code == 400 and "never truncated" in response.text, response.text
    body = {"model": "q3", "input": [{"video": _video_uri(CLIP)}], "video_frames": 1}
    response = httpx.post(server.url + "/v1/embeddings", json=body, timeout=60)
    assert response.status_code == 400 and response.json()["error"]["param"] == "video_frames"


def test_chat_messages_map_onto_the_recipe(server, qwen3_expected):
    """vLLM's chat form for a vision-language embedder: the system message is the
    instruction, the user message's parts the item (the recipe writes the chat turn)."""
    user = {
        "role": "user",
        "content": [
            {"type": "text", "text": "a dog"},
            {"type": "image_url", "image_url": {"url": _uri(DOG)}},
        ],
    }
    response = httpx.post(
        server.url + "/v1/embeddings", json={"model": "q3", "messages": [user]}, timeout=60
    )
    assert response.status_code == 200, response.text
    got = np.array(response.json()["data"][0]["embedding"], np.float32)
    np.testing.assert_allclose(got, qwen3_expected[2], atol=1e-5)
    instruction = "Retrieve images relevant to the query."
    system = {"role": "system", "content": instruction}
    as_chat = httpx.post(
        server.url + "/v1/embeddings", json={"model": "q3", "messages": [system, user]}
    ).json()["data"][0]["embedding"]
    as_field = httpx.post(
        server.url + "/v1/embeddings",
        json={
            "model": "q3",
            "input": [{"text": "a dog", "image": _uri(DOG)}],
            "instruction": instruction,
        },
    ).json()["data"][0]["embedding"]
    np.testing.assert_allclose(as_chat, as_field, atol=1e-6)
    assert not np.allclose(as_chat, got, atol=1e-3)  # the instruction changed the vector
    for messages in ([system], [user, {"role": "assistant", "content": "hi"}], [user, user]):
        bad = httpx.post(server.url + "/v1/embeddings", json={"model": "q3", "messages": messages})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "messages", bad.text


def test_input_type_query_is_the_cards_query_instruction(server):
    """OpenAI's extension and Cohere's `search_query`: the card's query instruction; a
    document keeps the recipe's default; an unknown input type is a 400 naming it."""
    import cohere

    item = [{"text": "a dog", "image": _uri(DOG)}]

    def vector(**fields) -> np.ndarray:
        body = {"model": "q3", "input": item, **fields}
        response = httpx.post(server.url + "/v1/embeddings", json=body, timeout=60)
        assert response.status_code == 200, response.text
        return np.array(response.json()["data"][0]["embedding"], np.float32)

    query = vector(input_type="query")
    np.testing.assert_allclose(
        query,
        vector(instruction="Retrieve images or text relevant to the user's query."),
        atol=1e-6,
    )
    np.testing.assert_allclose(vector(input_type="document"), vector(), atol=1e-6)
    client = cohere.ClientV2(base_url=server.url, api_key="unused")
    got = client.embed(
        model="q3", input_type="search_query", embedding_types=["float"],
        inputs=[{"content": [{"type": "text", "text": "a dog"},
                             {"type": "image_url", "image_url": {"url": _uri(DOG)}}]}],
    )  # fmt: skip
    np.testing.assert_allclose(np.array(got.embeddings.float_[0]), query, atol=1e-5)
    bad = httpx.post(
        server.url + "/v1/embeddings", json={"model": "q3", "input": item, "input_type": "poem"}
    )
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "input_type", bad.text
