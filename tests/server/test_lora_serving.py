"""LoRA adapters served: `model="base:adapter"`, `lora_path` by name or by path, root confinement."""

from __future__ import annotations

import base64
import concurrent.futures
import json

import httpx
import numpy as np
import pytest

from jaxembed.api import Embedder
from tests.helpers import MINILM_DIR, ServerProcess

BASE = "minilm"  # --served-model-name: clients send model="minilm:my-adapter"
TEXTS = ["how do penguins stay warm?", "Emperor penguins huddle together in the cold."]


def _make_adapter(out_dir, targets, seed, rank=4):
    import peft
    import torch
    import transformers

    torch.manual_seed(seed)
    model = transformers.AutoModel.from_pretrained(MINILM_DIR).eval()
    config = peft.LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets,
                             init_lora_weights=False)  # fmt: skip
    peft.get_peft_model(model, config).save_pretrained(out_dir)


@pytest.fixture(scope="module")
def lora_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora-root")
    outside = tmp_path_factory.mktemp("outside-root")
    _make_adapter(root / "my-adapter", ["query", "value"], seed=1)
    _make_adapter(root / "team" / "other", ["dense"], seed=2)
    _make_adapter(root / "team" / "third", ["key"], seed=3)
    _make_adapter(outside / "escaped", ["query"], seed=4)
    _make_adapter(root / "too-big", ["query"], seed=5, rank=16)
    (root / "broken").mkdir()
    (root / "broken" / "adapter_config.json").write_text("{")
    (root / "broken" / "adapter_model.safetensors").write_bytes(b"x")
    (root / "link").symlink_to(outside / "escaped", target_is_directory=True)
    server = ServerProcess(
        "--lora", f"my-adapter={root / 'my-adapter'}", "--lora-root", str(root),
        "--max-loras", "2", "--max-lora-rank", "8", "--no-warmup", "--served-model-name", BASE,
        "--seq-lengths", "16,32,64,128,256",
    )  # fmt: skip
    reference = Embedder.from_pretrained(None)
    reference.enable_lora(max_loras=3, max_rank=8)
    for name in ("my-adapter", "team/other", "team/third"):
        reference.adapter_slot(name, root / name)
    yield server, reference, root, outside
    assert server.stop() == 0, server.log()


@pytest.fixture(scope="module")
def client(lora_setup):
    from openai import OpenAI

    return OpenAI(base_url=lora_setup[0].url + "/v1", api_key="EMPTY", max_retries=0)


def _vectors(response) -> np.ndarray:
    return np.asarray([d.embedding for d in response.data], dtype=np.float32)


def test_model_colon_adapter_and_lora_path_by_name(lora_setup, client):
    _, reference, _, _ = lora_setup
    want = reference.embed(TEXTS, adapter="my-adapter")
    by_model = client.embeddings.create(model=f"{BASE}:my-adapter", input=TEXTS)
    assert by_model.model == f"{BASE}:my-adapter"
    assert np.abs(_vectors(by_model) - want).max() <= 1e-5
    by_path = client.embeddings.create(
        model=BASE, input=TEXTS, extra_body={"lora_path": "my-adapter"}
    )
    assert np.abs(_vectors(by_path) - want).max() <= 1e-5
    base = client.embeddings.create(model=BASE, input=TEXTS)
    assert np.abs(_vectors(base) - reference.embed(TEXTS)).max() <= 1e-5
    assert np.abs(_vectors(base) - want).max() > 1e-3  # the adapter matters


def test_adapters_by_path_load_on_first_use_and_evict_lru(lora_setup, client):
    server, reference, _, _ = lora_setup
    for name in ("team/other", "team/third", "team/other"):  # 2 slots: my-adapter is pinned
        got = client.embeddings.create(model=BASE, input=TEXTS, extra_body={"lora_path": name})
        assert np.abs(_vectors(got) - reference.embed(TEXTS, adapter=name)).max() <= 1e-5
    ids = {m["id"]: m for m in httpx.get(server.url + "/v1/models").json()["data"]}
    assert ids[f"{BASE}:my-adapter"]["parent"] == BASE
    assert f"{BASE}:team/other" in ids


def test_concurrent_requests_for_different_adapters(lora_setup):
    server, reference, _, _ = lora_setup
    jobs = [(None, t) for t in TEXTS] + [("my-adapter", t) for t in TEXTS] * 3
    jobs += [("team/other", t) for t in TEXTS]

    def send(job):
        adapter, text = job
        body = {"input": text, **({"lora_path": adapter} if adapter else {})}
        r = httpx.post(server.url + "/v1/embeddings", json=body, timeout=120)
        assert r.status_code == 200, r.text
        return np.asarray(r.json()["data"][0]["embedding"], dtype=np.float32)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(send, jobs))
    for (adapter, text), got in zip(jobs, results, strict=True):
        want = reference.embed([text], adapter=adapter)[0]
        assert np.abs(got - want).max() <= 1e-5, adapter


@pytest.mark.parametrize(
    "spec,fragment",
    [
        ("../outside-root0/escaped", "outside"),
        ("link", "outside"),
        ("team/../../x", "outside"),
        ("no-such-adapter", "unknown adapter"),
        ("too-big", "above the maximum"),
        ("broken", "not valid JSON"),
        ("", "outside"),
    ],
)
def test_bad_adapter_references_are_400(lora_setup, spec, fragment):
    server, _, root, outside = lora_setup
    if spec.startswith("../outside"):
        spec = f"../{outside.name}/escaped"
    r = httpx.post(server.url + "/v1/embeddings", json={"input": "x", "lora_path": spec})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert fragment in error["message"] and error["param"] == "lora_path"
    assert str(root) not in error["message"] and str(outside) not in error["message"]
    # An absolute path outside the root is refused the same way.
    r = httpx.post(
        server.url + "/v1/embeddings",
        json={"input": "x", "lora_path": str(outside / "escaped")},
    )
    assert r.status_code == 400 and "outside" in r.json()["error"]["message"]
    assert httpx.post(server.url + "/v1/embeddings", json={"input": "still ok"}).status_code == 200


def test_unknown_adapter_in_model_name(lora_setup):
    server = lora_setup[0]
    r = httpx.post(server.url + "/v1/embeddings", json={"input": "x", "model": f"{BASE}:nope"})
    assert r.status_code == 400 and "unknown adapter" in r.json()["error"]["message"]
    assert r.json()["error"]["param"] == "model"
    r = httpx.post(
        server.url + "/v1/embeddings",
        json={"input": "x", "model": f"{BASE}:my-adapter", "lora_path": "team/other"},
    )
    assert r.status_code == 400
    assert json.loads(r.text)["error"]["param"] == "lora_path"


def test_server_and_python_api_agree_bit_for_bit_with_an_adapter(lora_setup):
    server, reference, _, _ = lora_setup
    body = httpx.post(
        server.url + "/v1/embeddings",
        json={"model": f"{BASE}:my-adapter", "input": TEXTS, "encoding_format": "base64"},
    ).json()
    got = np.stack(
        [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in body["data"]]
    )
    np.testing.assert_array_equal(got, reference.embed(TEXTS, adapter="my-adapter"))
