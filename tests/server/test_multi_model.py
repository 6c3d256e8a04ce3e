"""Three models in one server process (MiniLM, a tiny decoder, a tiny CLIP), from a --config file.

Each answers by name through the openai client with the vectors its own `Embedder` gives;
/v1/models lists all three; 64 concurrent mixed requests are all correct; a flood on one
model fills only that model's queue (503 there) and the others keep answering; SIGTERM
drains in-flight requests of all three.
"""

from __future__ import annotations

import base64
import concurrent.futures
import random
import signal
import statistics
import threading
import time

import httpx
import numpy as np
import pytest
from openai import OpenAI

from jaxembed.api import Embedder
from tests.helpers import (
    ServerProcess,
    generated_image,
    image_bytes,
    metric_value,
    save_tiny_clip,
    save_tiny_decoder,
)

FLOODED_QUEUE = 24  # the decoder's max_queued_requests (more than the mixed test sends it)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("three-models")
    save_tiny_decoder("qwen3", root / "decoder", seed=31)
    save_tiny_clip(root / "clip", seed=32)
    return {"minilm": "all-MiniLM-L6-v2", "decoder": root / "decoder", "clip": root / "clip"}


@pytest.fixture(scope="module")
def config_file(model_dirs, tmp_path_factory):
    path = tmp_path_factory.mktemp("config") / "models.yaml"
    path.write_text(
        "models:\n"
        f"  - name: minilm\n    model: {model_dirs['minilm']}\n"
        "    served_model_names: [text-embedding-3-small]\n"
        f"  - name: tiny-decoder\n    model: {model_dirs['decoder']}\n    dtype: float32\n"
        f"    max_queued_requests: {FLOODED_QUEUE}\n    token_budget: 256\n"
        f"  - name: tiny-clip\n    model: {model_dirs['clip']}\n"
    )
    return path


@pytest.fixture(scope="module")
def references(model_dirs):
    return {
        "minilm": Embedder.from_pretrained(model_dirs["minilm"], compile_cache_dir=False),
        "tiny-decoder": Embedder.from_pretrained(
            model_dirs["decoder"], dtype="float32", compile_cache_dir=False
        ),
        "tiny-clip": Embedder.from_pretrained(model_dirs["clip"], compile_cache_dir=False),
    }


@pytest.fixture(scope="module")
def server(config_file):
    proc = ServerProcess("--config", str(config_file), "--cache-mb", "0")
    yield proc
    assert proc.stop() == 0, proc.log()


@pytest.fixture(scope="module")
def client(server):
    return OpenAI(base_url=server.url + "/v1", api_key="EMPTY", max_retries=0, timeout=120)


def _vectors(response) -> np.ndarray:
    return np.asarray([d.embedding for d in response.data], dtype=np.float32)


def test_each_model_answers_by_name(client, references):
    texts = ["three models, one process", "routing by the request's model"]
    for name in ("minilm", "tiny-decoder", "tiny-clip"):
        response = client.embeddings.create(model=name, input=texts)
        assert response.model == name
        want = references[name].embed(texts)
        assert _vectors(response).shape == want.shape
        assert np.abs(_vectors(response) - want).max() <= 1e-6, name
    alias = client.embeddings.create(model="text-embedding-3-small", input=texts)
    assert alias.model == "text-embedding-3-small"
    assert np.abs(_vectors(alias) - references["minilm"].embed(texts)).max() <= 1e-6


def test_models_lists_all_three_with_modalities(client, server):
    listed = {m.id: m for m in client.models.list().data}
    assert set(listed) == {"minilm", "text-embedding-3-small", "tiny-decoder", "tiny-clip"}
    raw = {m["id"]: m for m in httpx.get(server.url + "/v1/models").json()["data"]}
    assert raw["tiny-clip"]["modalities"] == ["text", "image", "video"]
    assert raw["minilm"]["dimensions"] == 384 and raw["tiny-decoder"]["dimensions"] == 64
    assert httpx.get(server.url + "/ready").text == "ready"


def test_images_go_to_the_model_that_embeds_them(server, references):
    image = image_bytes(generated_image((40, 30), seed=7))
    item = {"image": base64.b64encode(image).decode()}
    ok = httpx.post(
        server.url + "/v1/embeddings",
        json={"model": "tiny-clip", "input": [item], "encoding_format": "base64"},
    )
    got = np.frombuffer(base64.b64decode(ok.json()["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_array_equal(got, references["tiny-clip"].embed_images([image])[0])
    refused = httpx.post(server.url + "/v1/embeddings", json={"model": "minilm", "input": [item]})
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "unsupported_modality"
    assert "minilm only embeds text" in refused.json()["error"]["message"]


def test_64_concurrent_mixed_requests_are_all_correct(client, references):
    rng = random.Random(0)
    jobs = [
        (rng.choice(list(references)), [f"mixed request {i} " + "word " * rng.randint(1, 60)])
        for i in range(64)
    ]

    def one(job):  # truncate: CLIP takes 77 tokens, the others more
        name, texts = job
        return _vectors(
            client.embeddings.create(model=name, input=texts, extra_body={"truncate": True})
        )

    with concurrent.futures.ThreadPoolExecutor(64) as pool:
        results = list(pool.map(one, jobs))
    for (name, texts), got in zip(jobs, results, strict=True):
        want = references[name].embed(texts, truncate=True)
        assert np.abs(got - want).max() <= 1e-5, name


def test_metrics_are_labelled_by_model(server):
    text = httpx.get(server.url + "/metrics").text
    for name in ("minilm", "tiny-decoder", "tiny-clip"):
        assert f'jaxembed_inputs_total{{model="{name}"}}' in text
        assert f'jaxembed_queue_requests{{model="{name}"}}' in text


def _latency(http: httpx.Client, model: str) -> float:
    start = time.perf_counter()
    response = http.post("/v1/embeddings", json={"model": model, "input": "a short probe"})
    assert response.status_code == 200, response.text
    return time.perf_counter() - start


def test_a_flood_on_one_model_fills_only_its_queue(server, capsys):
    """The decoder's queue holds FLOODED_QUEUE requests: a flood gets 503s there, while MiniLM and CLIP
    requests still answer (latency under the flood reported; bounded generously)."""
    others = ("minilm", "tiny-clip")
    probe = httpx.Client(base_url=server.url, timeout=60)  # one connection, as a real client
    for model in others:
        _latency(probe, model)  # warm paths
    unloaded = {m: statistics.median(_latency(probe, m) for _ in range(15)) for m in others}
    stop = threading.Event()
    statuses: list[int] = []
    flood_body = {"model": "tiny-decoder", "input": [f"flood {i} " * 20 for i in range(64)]}

    def flood() -> None:
        with httpx.Client(timeout=120) as http:
            while not stop.is_set():
                response = http.post(server.url + "/v1/embeddings", json=flood_body)
                statuses.append(response.status_code)
                if response.status_code == 503:  # as the openai client does: wait, retry
                    assert response.json()["error"]["code"] == "overloaded"
                    stop.wait(float(response.headers["Retry-After"]))

    threads = [threading.Thread(target=flood) for _ in range(2 * FLOODED_QUEUE)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        loaded = {m: statistics.median(_latency(probe, m) for _ in range(15)) for m in others}
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert 503 in statuses and 200 in statuses, statuses
    assert set(statuses) <= {200, 503}
    with capsys.disabled():
        print(
            "\nflood on tiny-decoder: p50 unloaded → loaded "
            + ", ".join(f"{m} {unloaded[m] * 1e3:.1f} → {loaded[m] * 1e3:.1f} ms" for m in others)
        )
    for model in others:  # generous: the measured ratio is in docs/benchmarks.md
        assert loaded[model] <= 5 * unloaded[model] + 0.25, (model, unloaded, loaded)


def test_ready_reason_names_the_model_still_warming():
    from types import SimpleNamespace

    from jaxembed_server.route_info import not_ready_reason

    def model(name, warm):
        service = SimpleNamespace(warm=warm, unhealthy_reason=lambda: None)
        return SimpleNamespace(name=name, service=service)

    models = [model("a", True), model("b", False)]
    assert not_ready_reason(False, models) == "warming up: b"
    assert not_ready_reason(True, models) == "shutting down"
    assert not_ready_reason(False, [model("a", True)]) is None


def test_sigterm_drains_all_three(server, references):
    """Last in this module: it stops the shared server."""
    bodies = {
        "minilm": [f"drain minilm {i} " * 30 for i in range(256)],
        "tiny-decoder": [f"drain decoder {i} " * 15 for i in range(256)],
        "tiny-clip": [f"drain clip {i} " * 10 for i in range(256)],
    }
    results: dict[str, httpx.Response] = {}

    def send(model: str) -> None:
        results[model] = httpx.post(
            server.url + "/v1/embeddings",
            json={"model": model, "input": bodies[model], "truncate": True},
            timeout=120,
        )

    threads = [threading.Thread(target=send, args=(m,)) for m in bodies]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while metric_value(server.url, "jaxembed_active_requests") < 3:
        assert time.monotonic() < deadline, (
            f"the requests never became active: {[(m, r.text) for m, r in results.items()]}"
        )
        time.sleep(0.01)
    server.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join()
    for model, response in results.items():
        assert response.status_code == 200, (model, response.text)
        got = np.asarray([d["embedding"] for d in response.json()["data"]], dtype=np.float32)
        want = references[model].embed(bodies[model], truncate=True)
        assert np.abs(got - want).max() <= 1e-5, model
    assert server.proc.wait(timeout=60) == 0, server.log()
