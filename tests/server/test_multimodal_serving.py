"""Text + image + video items through a real server with a tiny CLIP, and media safety over HTTP."""

from __future__ import annotations

import base64
import concurrent.futures
import io
import os

import httpx
import numpy as np
import pytest
from openai import OpenAI

from jaxembed.api import Embedder
from jaxembed.vectors import fuse_modalities
from tests.helpers import (
    MediaHTTPServer,
    ServerProcess,
    bomb_png,
    generated_image,
    generated_video,
    image_bytes,
    metric_value,
    save_tiny_clip,
)

MODEL = "tiny-clip"
PATCHES = 16  # (32 / 8)^2


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("clip") / "tiny-clip"
    save_tiny_clip(directory, seed=5)
    return directory


@pytest.fixture(scope="module")
def reference(clip_dir):
    return Embedder.from_pretrained(clip_dir, compile_cache_dir=False)


@pytest.fixture(scope="module")
def media_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    (root / "cat.png").write_bytes(image_bytes(generated_image((40, 30), seed=1)))
    (root / "clip.mp4").write_bytes(generated_video(12))
    (tmp_path_factory.getbasetemp() / "outside.png").write_bytes(
        image_bytes(generated_image((9, 9)))
    )
    return root


@pytest.fixture(scope="module")
def http_media():
    files = {
        "cat.png": image_bytes(generated_image((50, 40), seed=2)),
        "huge.png": image_bytes(generated_image((400, 400), seed=3), "BMP"),  # ~480 KB
        "clip.mp4": generated_video(16),
    }
    with MediaHTTPServer(files) as server:
        yield server


@pytest.fixture(scope="module")
def open_server(clip_dir, media_root):
    """Private URLs allowed (the test's HTTP server is on loopback), paths inside media_root."""
    proc = ServerProcess(
        "--model",
        str(clip_dir),
        "--served-model-name",
        MODEL,
        "--allow-private-media",
        "--media-root",
        str(media_root),
        "--max-media-bytes",
        "200000",
    )
    yield proc
    assert proc.stop() == 0, proc.log()


@pytest.fixture(scope="module")
def default_server(clip_dir):
    """Safe defaults: no private addresses, no local paths."""
    proc = ServerProcess("--model", str(clip_dir), "--served-model-name", MODEL)
    yield proc
    assert proc.stop() == 0, proc.log()


def _client(server: ServerProcess) -> OpenAI:
    return OpenAI(base_url=server.url + "/v1", api_key="EMPTY", max_retries=0, timeout=60)


def _vectors(response) -> np.ndarray:
    return np.array([d.embedding for d in response.data], dtype=np.float32)


def _post(server: ServerProcess, body: dict) -> httpx.Response:
    return httpx.post(server.url + "/v1/embeddings", json=body, timeout=60)


def test_readme_example_through_openai_client(open_server, http_media, reference):
    """README's multimodal example: a text, an image URL, a text + image data URI."""
    cat = http_media.files["cat.png"]
    data_uri = "data:image/png;base64," + base64.b64encode(cat).decode()
    client = _client(open_server)
    items = [
        {"text": "a photo of a cat"},
        {"image": f"{http_media.url}/files/cat.png"},
        {"text": "a cat on a sofa", "image": data_uri},
    ]
    response = client.embeddings.create(model=MODEL, input=items)  # base64, the client's default
    as_floats = client.embeddings.create(model=MODEL, input=items, encoding_format="float")
    from PIL import Image

    image = Image.open(io.BytesIO(cat))
    text_vectors = reference.embed(["a photo of a cat", "a cat on a sofa"])
    image_vector = reference.embed_images([image])[0]
    expected = np.stack(
        [
            text_vectors[0],
            image_vector,
            fuse_modalities([(text_vectors[1], 1.0), (image_vector, 1.0)]),
        ]
    )
    for got in (_vectors(response), _vectors(as_floats)):
        assert got.shape == (3, 24)
        np.testing.assert_allclose(got, expected, atol=1e-5)
    assert [d.index for d in response.data] == [0, 1, 2]
    tokens = sum(len(t) for t in reference.tokenize(["a photo of a cat", "a cat on a sofa"]))
    assert response.usage.prompt_tokens == response.usage.total_tokens == tokens + 2 * PATCHES


def test_local_path_image_and_dimensions(open_server, media_root, reference):
    from PIL import Image

    body = {"model": MODEL, "input": [{"image": "cat.png"}], "dimensions": 8}
    response = _post(open_server, body)
    assert response.status_code == 200, response.text
    got = np.array(response.json()["data"][0]["embedding"], dtype=np.float32)
    full = reference.embed_images([Image.open(media_root / "cat.png")])[0]
    np.testing.assert_allclose(got, full[:8] / np.linalg.norm(full[:8]), atol=1e-5)


@pytest.mark.parametrize("frames", [None, 4])
def test_video_is_mean_of_sampled_frame_embeddings(open_server, http_media, reference, frames):
    import av

    from jaxembed.media import sample_frame_indices

    video = http_media.files["clip.mp4"]
    body = {"model": MODEL, "input": [{"video": base64.b64encode(video).decode()}]}
    if frames:
        body["video_frames"] = frames
    response = _post(open_server, body)
    assert response.status_code == 200, response.text
    got = np.array(response.json()["data"][0]["embedding"], dtype=np.float32)
    # Independently decode every frame with PyAV and take the documented sample.
    with av.open(io.BytesIO(video)) as container:
        all_frames = [f.to_image() for f in container.decode(video=0)]
    count = frames or reference.card.video_frames
    picked = [all_frames[i] for i in sample_frame_indices(len(all_frames), count)]
    mean = reference.embed_images(picked).mean(axis=0)
    expected = mean / np.linalg.norm(mean)
    assert float(got @ expected) >= 0.99999
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert response.json()["usage"]["prompt_tokens"] == len(picked) * PATCHES
    # The same video from a URL and from a path under the media root.
    by_url = _post(
        open_server, {"model": MODEL, "input": [{"video": f"{http_media.url}/files/clip.mp4"}]}
    )
    assert by_url.status_code == 200, by_url.text
    by_path = _post(open_server, {"model": MODEL, "input": [{"video": "clip.mp4"}]})
    assert by_path.status_code == 200, by_path.text


def _bad_items(http_media) -> list[tuple[dict, str]]:
    video = http_media.files["clip.mp4"]
    b64 = lambda data: base64.b64encode(data).decode()  # noqa: E731
    return [
        ({"image": f"{http_media.url}/files/huge.png"}, "media_too_large"),
        ({"image": "data:image/png;base64," + b64(bomb_png(100_000, 100_000))}, "invalid_image"),
        ({"image": b64(os.urandom(3000))}, "invalid_image"),
        ({"image": "data:image/png;base64," + b64(b"<html>not an image</html>")}, "invalid_image"),
        ({"video": b64(video[: len(video) // 2])}, "invalid_video"),
        ({"image": "../outside.png"}, "media_forbidden"),
        ({"image": "file:///etc/passwd"}, "media_forbidden"),
        ({"image": "gopher://example.com/x"}, "media_forbidden"),
        ({"image": f"{http_media.url}/files/missing.png"}, "media_fetch_failed"),
    ]


def test_bad_media_are_400s_naming_the_item_and_the_server_keeps_serving(open_server, http_media):
    good = {"text": "a good item"}
    for item, code in _bad_items(http_media):
        response = _post(open_server, {"model": MODEL, "input": [good, item]})
        assert response.status_code == 400, (item, response.text)
        error = response.json()["error"]
        assert error["code"] == code, (item, error)
        assert error["message"].startswith("input[1]."), error
        assert error["type"] == "invalid_request_error" and error["param"] == "input"
        assert "/tmp" not in error["message"] and "Traceback" not in error["message"]
    ok = _post(open_server, {"model": MODEL, "input": [good, {"image": "cat.png"}]})
    assert ok.status_code == 200, ok.text
    assert httpx.get(open_server.url + "/ready").status_code == 200
    assert "Traceback" not in open_server.log()


def test_one_bad_request_does_not_harm_concurrent_ones(open_server, http_media, reference):
    bad = _bad_items(http_media)
    good_body = {"model": MODEL, "input": [{"image": "cat.png"}, {"text": "a cat"}]}
    expected = _vectors_of(_post(open_server, good_body))

    def send(i: int) -> tuple[int, dict]:
        if i % 2:
            item, _ = bad[i % len(bad)]
            response = _post(open_server, {"model": MODEL, "input": [item]})
        else:
            response = _post(open_server, good_body)
        return response.status_code, response.json()

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(send, range(24)))
    for i, (status, body) in enumerate(results):
        if i % 2:
            assert status == 400, body
        else:
            assert status == 200, body
            np.testing.assert_allclose(_vectors_of_json(body), expected, atol=1e-6)


def _vectors_of(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return _vectors_of_json(response.json())


def _vectors_of_json(body: dict) -> np.ndarray:
    return np.array([d["embedding"] for d in body["data"]], dtype=np.float32)


def test_safe_defaults_refuse_private_urls_and_paths(default_server, http_media):
    port = http_media.url.rsplit(":", 1)[1]
    before = len(http_media.requests)
    for source in (
        f"{http_media.url}/files/cat.png",
        f"http://localhost:{port}/files/cat.png",
        f"http://[::1]:{port}/files/cat.png",
        "http://169.254.169.254/latest/meta-data/",
        "cat.png",
    ):
        response = _post(default_server, {"model": MODEL, "input": [{"image": source}]})
        assert response.status_code == 400, (source, response.text)
        assert response.json()["error"]["code"] == "media_forbidden", response.text
    assert len(http_media.requests) == before  # nothing reached the internal server
    ok = _post(default_server, {"model": MODEL, "input": "still serving"})
    assert ok.status_code == 200


def test_limits_on_items_and_frames(open_server):
    too_many = [{"image": "cat.png"}] * 65
    response = _post(open_server, {"model": MODEL, "input": too_many})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "too_many_media_items"
    response = _post(
        open_server, {"model": MODEL, "input": [{"video": "clip.mp4"}], "video_frames": 0}
    )
    assert response.status_code == 400
    response = _post(
        open_server, {"model": MODEL, "input": [{"video": "clip.mp4"}], "video_frames": 65}
    )
    assert response.status_code == 400


def test_text_model_still_refuses_images(client):
    response = httpx.post(
        str(client.base_url) + "embeddings",
        json={"input": [{"text": "ok"}, {"image": "cat.png"}]},
        timeout=30,
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "unsupported_modality"


def test_models_lists_modalities(open_server):
    data = httpx.get(open_server.url + "/v1/models", timeout=10).json()["data"]
    assert data[0]["id"] == MODEL and data[0]["modalities"] == ["text", "image", "video"]


def test_repeated_images_come_from_the_cache(open_server):
    image = base64.b64encode(image_bytes(generated_image((33, 44), seed=42))).decode()
    other = base64.b64encode(image_bytes(generated_image((33, 44), seed=43))).decode()
    hits = metric_value(open_server.url, "jaxembed_cache_hits_total")
    first = _vectors_of(_post(open_server, {"model": MODEL, "input": [{"image": image}]}))
    assert metric_value(open_server.url, "jaxembed_cache_hits_total") == hits  # a miss
    again = _post(open_server, {"model": MODEL, "input": [{"image": image}, {"image": other}]})
    assert metric_value(open_server.url, "jaxembed_cache_hits_total") == hits + 1  # only the repeat
    vectors = _vectors_of(again)
    np.testing.assert_array_equal(vectors[0], first[0])
    assert not np.allclose(vectors[1], first[0])
    assert again.json()["usage"]["prompt_tokens"] == 2 * PATCHES  # usage counts cached items too


def test_server_and_python_api_agree_bit_for_bit(open_server, http_media, reference):
    """Text, an image, a video and a fused item: the server and `Embedder` share one
    pipeline (decoding, batching, frame means, fusion), so the bits are the same."""
    from jaxembed.engine.request.jobs import EmbedItem

    image = image_bytes(generated_image((37, 29), seed=11))
    video = http_media.files["clip.mp4"]

    def served(item: dict) -> np.ndarray:
        body = {"model": MODEL, "input": [item], "encoding_format": "base64"}
        response = _post(open_server, body)
        assert response.status_code == 200, response.text
        data = response.json()["data"][0]["embedding"]
        return np.frombuffer(base64.b64decode(data), dtype="<f4")

    b64 = base64.b64encode
    np.testing.assert_array_equal(served({"text": "a cat"}), reference.embed(["a cat"])[0])
    np.testing.assert_array_equal(
        served({"image": b64(image).decode()}), reference.embed_images([image])[0]
    )
    np.testing.assert_array_equal(
        served({"video": b64(video).decode()}), reference.embed_video(video)
    )
    want = reference.embed_items([EmbedItem(text="a cat", image=image)])[0]
    np.testing.assert_array_equal(served({"text": "a cat", "image": b64(image).decode()}), want)


def test_chat_messages_with_image_parts_are_one_fused_item(open_server):
    """vLLM's chat form for an image model (no chat template): text parts joined + the image."""
    image = (
        "data:image/png;base64,"
        + base64.b64encode(image_bytes(generated_image((30, 20), seed=12))).decode()
    )
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "a red square"},
                {"type": "image_url", "image_url": {"url": image}},
            ],
        }
    ]
    chat = _post(open_server, {"model": MODEL, "messages": messages})
    item = _post(open_server, {"model": MODEL, "input": [{"text": "a red square", "image": image}]})
    assert chat.status_code == 200, chat.text
    np.testing.assert_allclose(
        chat.json()["data"][0]["embedding"], item.json()["data"][0]["embedding"], atol=1e-7
    )
    two = messages[0]["content"] + [{"type": "image_url", "image_url": {"url": image}}]
    refused = _post(open_server, {"model": MODEL, "messages": [{"role": "user", "content": two}]})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "messages"


def test_cohere_images_and_mixed_inputs(open_server):
    import cohere

    image = (
        "data:image/png;base64,"
        + base64.b64encode(image_bytes(generated_image((26, 18), seed=13))).decode()
    )
    co = cohere.ClientV2(api_key="unused", base_url=open_server.url)
    by_images = co.embed(model=MODEL, images=[image], input_type="image")
    item = _post(open_server, {"model": MODEL, "input": [{"image": image}]}).json()
    np.testing.assert_allclose(
        by_images.embeddings.float_[0], item["data"][0]["embedding"], atol=1e-7
    )
    mixed = co.embed(
        model=MODEL,
        input_type="search_document",
        inputs=[
            {
                "content": [
                    {"type": "text", "text": "a photo"},
                    {"type": "image_url", "image_url": {"url": image}},
                ]
            }
        ],
    )
    fused = _post(
        open_server, {"model": MODEL, "input": [{"text": "a photo", "image": image}]}
    ).json()
    np.testing.assert_allclose(mixed.embeddings.float_[0], fused["data"][0]["embedding"], atol=1e-7)
    assert mixed.meta.billed_units.input_tokens == fused["usage"]["prompt_tokens"]
