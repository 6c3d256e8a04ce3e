"""One model over two processes (4 CPU devices each) joined with jax.distributed on 127.0.0.1.

Process 0 serves HTTP and broadcasts every batch through JAX's collectives (gloo on CPU);
process 1 follows. The mesh (data=2, model=4) spans both processes, so every step's
collectives cross the process boundary, as on a multi-host TPU slice. Liveness comes from
JAX's coordination service (heartbeat timeout 1 s here).
"""

from __future__ import annotations

import base64
import concurrent.futures
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from jaxembed.api import Embedder
from tests.helpers import ServerProcess, free_port, save_tiny_model
from tests.texts import varied_texts

GRID = ("--seq-lengths", "16,32,64,128", "--token-budget", "64")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-bert-multihost")
    save_tiny_model("bert", path, seed=3)
    return path


class ProcessGroup:
    """A follower (process 1) started first, then the leader (process 0) as a ServerProcess."""

    def __init__(self, model_dir: Path, tmp: Path, *more_models: Path, extra: tuple = ()):
        coordinator = f"127.0.0.1:{free_port()}"
        env = {
            **os.environ,
            "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
        }
        common = [
            "--model", str(model_dir), *(a for m in more_models for a in ("--model", str(m))),
            "--distributed", "--coordinator-address", coordinator,
            "--num-processes", "2", "--mesh", "data=2,model=4", "--heartbeat-timeout", "1",
            *GRID, *extra,
        ]  # fmt: skip
        self.follower_log = (tmp / "follower.log").open("wb")
        self.follower = subprocess.Popen(
            [sys.executable, "-m", "jaxembed.cli", "serve", *common, "--process-id", "1",
             "--host", "127.0.0.1", "--port", str(free_port())],
            stdout=self.follower_log, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
        try:
            self.leader = ServerProcess(*common, "--process-id", "0", env=env, ready_timeout=300)
        except Exception:
            self.follower.kill()
            raise

    def follower_output(self) -> str:
        self.follower_log.flush()
        return Path(self.follower_log.name).read_text(errors="replace")[-3000:]

    def cleanup(self) -> None:
        for proc in (self.leader.proc, self.follower):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        self.follower_log.close()


def _embed(url: str, texts: list[str], encoding: str = "float") -> np.ndarray:
    r = httpx.post(
        url + "/v1/embeddings",
        json={"input": texts, "encoding_format": encoding, "truncate": True},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    rows = sorted(r.json()["data"], key=lambda d: d["index"])
    if encoding == "base64":
        return np.stack([np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in rows])
    return np.asarray([d["embedding"] for d in rows], dtype=np.float32)


def test_two_processes_serve_one_model_and_stop_together(tiny_dir, tmp_path):
    texts = varied_texts()[:24]
    reference = Embedder.from_pretrained(tiny_dir, compile_cache_dir=False).embed(
        texts, truncate=True
    )
    group = ProcessGroup(tiny_dir, tmp_path)
    try:
        url = group.leader.url
        together = _embed(url, texts[:12])
        assert np.abs(together - reference[:12]).max() <= 1e-5
        # A second, differently bucketed request and the base64 encoding.
        rest = _embed(url, texts[12:], "base64")
        assert np.abs(rest - reference[12:]).max() <= 1e-5
        one = _embed(url, [texts[5]])
        assert np.abs(one[0] - reference[5]).max() <= 1e-5

        # SIGTERM to the leader under load: it drains (no request broken), tells the follower
        # to stop, both exit 0.
        def send(i: int) -> int:
            r = httpx.post(
                url + "/v1/embeddings", json={"input": texts[i % 24 :], "truncate": True},
                timeout=60,
            )  # fmt: skip
            return r.status_code

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            sent = [pool.submit(send, i) for i in range(8)]
            time.sleep(0.3)
            group.leader.proc.send_signal(signal.SIGTERM)
            codes = [f.result() for f in sent]
        assert codes == [200] * 8, codes
        assert group.leader.proc.wait(60) == 0, group.leader.log()
        assert group.follower.wait(30) == 0, group.follower_output()
        output = group.follower_output()
        assert "the leader stopped" in output
        # Packing works across the group: packed batches were broadcast too.
        packed = int(re.search(r"stopped after \d+ steps \((\d+) packed\)", output).group(1))
        assert packed > 0, output
    finally:
        group.cleanup()


def test_a_dead_follower_turns_ready_false(tiny_dir, tmp_path):
    group = ProcessGroup(tiny_dir, tmp_path)
    try:
        url = group.leader.url
        assert _embed(url, ["warm"]).shape[0] == 1
        group.follower.send_signal(signal.SIGKILL)
        group.follower.wait(10)
        killed = time.monotonic()
        while httpx.get(url + "/ready", timeout=5).status_code == 200:
            assert time.monotonic() - killed < 60, "leader still ready 60 s after the follower died"
            time.sleep(0.05)
        noticed = time.monotonic() - killed
        assert noticed < 2.0, f"the lost follower was noticed after {noticed:.1f} s"
        # Either the round it did not join, or the service dropping it (process 1).
        assert "answer" in httpx.get(url + "/ready", timeout=5).text
        # New work fails fast with a 503 in OpenAI shape rather than hanging in a collective.
        started = time.monotonic()
        r = httpx.post(url + "/v1/embeddings", json={"input": "after"}, timeout=30)
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "engine_unavailable"
        assert "Retry-After" in r.headers
        assert time.monotonic() - started < 20  # fails fast instead of hanging (timeout 30)
        assert httpx.get(url + "/health", timeout=5).status_code == 200  # alive, not ready
        # The leader exits promptly (no wait on JAX's shutdown barrier for a dead peer), non-zero
        # so that an orchestrator restarts the group.
        started = time.monotonic()
        assert group.leader.stop(timeout=60) == 1, group.leader.log()  # exit code, not a kill
        print(
            f"dead follower noticed in {noticed:.1f} s; leader exit {time.monotonic() - started:.1f} s"
        )
    finally:
        group.cleanup()


def test_a_dead_leader_ends_the_followers(tiny_dir, tmp_path):
    """The coordination service lives in the leader: when it dies, each follower's JAX agent
    ends its process, non-zero, so that the orchestrator recreates the group."""
    group = ProcessGroup(tiny_dir, tmp_path)
    try:
        assert _embed(group.leader.url, ["warm"]).shape[0] == 1
        group.leader.proc.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        rc = group.follower.wait(30)
        took = time.monotonic() - killed
        assert rc != 0 and took < 5.0, (rc, took, group.follower_output())
        print(f"follower exited {rc} {took:.1f} s after the leader was killed")
    finally:
        group.cleanup()


def test_an_embedder_and_a_reranker_in_one_group(tiny_dir, tmp_path):
    """Several models in one group, each step naming its model: the embedder equals
    sentence-transformers (min cos >= 0.99999), the reranker equals CrossEncoder."""
    from sentence_transformers import CrossEncoder, SentenceTransformer

    from tests.helpers import save_tiny_cross_encoder

    ranker_dir = tmp_path / "tiny-ce"
    save_tiny_cross_encoder("bert", ranker_dir, seed=3)
    texts = varied_texts()[:16]
    expected = SentenceTransformer(str(tiny_dir), device="cpu").encode(texts)
    query = "what runs on the accelerator?"
    scores = CrossEncoder(str(ranker_dir), device="cpu").predict([(query, t) for t in texts])
    group = ProcessGroup(tiny_dir, tmp_path, ranker_dir)
    try:
        url = group.leader.url
        r = httpx.post(
            url + "/v1/embeddings", json={"model": tiny_dir.name, "input": texts}, timeout=120
        )
        assert r.status_code == 200, r.text
        got = np.asarray([d["embedding"] for d in r.json()["data"]], np.float32)
        cos = (
            (got * expected).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
        )
        assert cos.min() >= 0.99999, cos.min()
        r = httpx.post(
            url + "/v1/rerank",
            json={"model": ranker_dir.name, "query": query, "documents": texts},
            timeout=120,
        )
        assert r.status_code == 200, r.text
        ranked = {e["index"]: e["relevance_score"] for e in r.json()["results"]}
        assert np.abs(np.array([ranked[i] for i in range(len(texts))]) - scores).max() <= 1e-5
        assert group.leader.stop() == 0, group.leader.log()
        assert group.follower.wait(30) == 0, group.follower_output()
    finally:
        group.cleanup()


def _peft_adapter(base_dir: Path, out_dir: Path, targets: list[str], seed: int) -> None:
    import peft
    import torch
    import transformers

    torch.manual_seed(seed)
    model = transformers.AutoModel.from_pretrained(base_dir).eval()
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False)
    peft.get_peft_model(model, config).save_pretrained(out_dir)


def _with_peft(base_dir: Path, adapter_dir: Path | None, texts: list[str]) -> np.ndarray:
    """sentence-transformers' vectors with the PEFT adapter on its transformer (or none)."""
    import peft
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(base_dir), device="cpu")
    if adapter_dir is not None:
        model[0].auto_model = peft.PeftModel.from_pretrained(model[0].auto_model, adapter_dir)
    return model.encode(texts)


def test_lora_adapters_in_one_group_equal_peft(tiny_dir, tmp_path):
    """A preloaded adapter and adapters loaded while serving (each load a step of its own,
    one evicting another from the same slot), mixed with base rows in the same batches:
    every answer equals PEFT on sentence-transformers (min cos >= 0.99999)."""
    root = tmp_path / "adapters"
    targets = {"a1": ["query", "value"], "a2": ["dense"], "a3": ["key", "query"]}
    for seed, (name, modules) in enumerate(targets.items(), start=1):
        _peft_adapter(tiny_dir, root / name, modules, seed)
    texts = varied_texts()[:12]
    want = {name: _with_peft(tiny_dir, root / name, texts) for name in targets}
    want[None] = _with_peft(tiny_dir, None, texts)
    extra = ("--lora", f"a1={root / 'a1'}", "--lora-root", str(root), "--max-loras", "2")
    group = ProcessGroup(tiny_dir, tmp_path, extra=extra)
    base = tiny_dir.name

    def embed(adapter: str | None, part: list[str]) -> np.ndarray:
        body: dict = {"model": base, "input": part}
        if adapter == "a1":
            body["model"] = f"{base}:a1"
        elif adapter is not None:
            body["lora_path"] = adapter
        r = httpx.post(group.leader.url + "/v1/embeddings", json=body, timeout=120)
        assert r.status_code == 200, r.text
        return np.asarray([d["embedding"] for d in r.json()["data"]], np.float32)

    def check(adapter: str | None, got: np.ndarray, rows: slice) -> None:
        ref = want[adapter][rows]
        cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
        assert cos.min() >= 0.99999, (adapter, cos.min())

    try:
        for adapter in ("a1", "a2", "a3", "a2", None):  # a2, a3, a2: three loads into slot 2
            check(adapter, embed(adapter, texts), slice(None))
        jobs = [(a, i) for a in (None, "a1", "a3") for i in range(0, 12, 3)]
        with concurrent.futures.ThreadPoolExecutor(8) as pool:  # adapters and base share batches
            answers = list(pool.map(lambda job: embed(job[0], texts[job[1] : job[1] + 3]), jobs))
        for (adapter, i), got in zip(jobs, answers, strict=True):
            check(adapter, got, slice(i, i + 3))
        assert group.leader.stop() == 0, group.leader.log()
        assert group.follower.wait(30) == 0, group.follower_output()
    finally:
        group.cleanup()


def test_clip_images_and_texts_in_one_group_equal_transformers(tmp_path):
    """A CLIP model on the pod: image batches are steps of their own (float pixels, bit for
    bit), text rows go the usual way; both equal transformers (min cos >= 0.99999)."""
    import torch

    from tests.helpers import generated_image, image_bytes, save_tiny_clip

    clip_dir = tmp_path / "tiny-clip"
    model, tokenizer, processor = save_tiny_clip(clip_dir, seed=3)
    images = [generated_image((40 + 3 * i, 50), "RGB", seed=i) for i in range(10)]
    texts = ["a photo of a cat", "a diagram of a pod", "two processes, one model"]
    with torch.no_grad():
        pixels = processor(images=images, return_tensors="pt")["pixel_values"]
        image_ref = model.get_image_features(pixel_values=pixels).pooler_output.numpy()
        tokens = tokenizer(texts, padding=True, return_tensors="pt")
        text_ref = model.get_text_features(**tokens).pooler_output.numpy()
    items = [
        {"image": "data:image/png;base64," + base64.b64encode(image_bytes(im)).decode()}
        for im in images
    ]
    group = ProcessGroup(clip_dir, tmp_path)
    try:
        for inputs, ref in ((items, image_ref), (texts, text_ref)):
            r = httpx.post(
                group.leader.url + "/v1/embeddings",
                json={"model": clip_dir.name, "input": inputs},
                timeout=120,
            )
            assert r.status_code == 200, r.text
            got = np.asarray([d["embedding"] for d in r.json()["data"]], np.float32)
            cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
            assert cos.min() >= 0.99999, cos.min()
        assert group.leader.stop() == 0, group.leader.log()
        assert group.follower.wait(30) == 0, group.follower_output()
    finally:
        group.cleanup()


def test_step_arrays_round_trip_bit_for_bit():
    from jaxembed.parallel.pod import pack_arrays, unpack_arrays

    rng = np.random.default_rng(0)
    arrays = [
        rng.standard_normal((2, 3, 5)).astype(np.float32),
        None,
        rng.integers(-(2**31), 2**31 - 1, (4, 7), dtype=np.int32),
        np.zeros((0, 3), np.float32),
        np.array(7, np.int32),
    ]
    back = unpack_arrays(pack_arrays(arrays))
    assert back[1] is None and len(back) == len(arrays)
    for want, got in zip(arrays, back, strict=True):
        if want is not None:
            assert got.dtype == want.dtype and got.shape == want.shape
            assert got.tobytes() == want.tobytes()


def test_a_vision_language_model_in_one_group_equals_one_process(tmp_path):
    """Qwen3-VL-Embedding on the pod: each batch goes as its programs' host arrays (patches,
    grids, deep-stack taps, M-RoPE positions); texts, images and a video through the
    leader's HTTP server equal one process's embed_items."""
    from jaxembed.engine.request.jobs import EmbedItem
    from tests.helpers import generated_image, generated_video, image_bytes, save_tiny_qwen3_vl

    path = tmp_path / "tiny-qwen3-vl"
    save_tiny_qwen3_vl(path, seed=3)
    cat, dog = (image_bytes(generated_image(s, seed=k)) for k, s in ((4, (90, 60)), (5, (40, 70))))
    clip = generated_video(12, size=(48, 32), fps=6)
    items = [
        EmbedItem(text="a cat on a mat"),
        EmbedItem(image=cat),
        EmbedItem(text="a dog", image=dog),
        EmbedItem(video=clip),
    ]
    embedder = Embedder.from_pretrained(path, compile_cache_dir=False)
    try:
        want = embedder.embed_items(items)
    finally:
        embedder.close()

    def uri(kind: str, data: bytes) -> str:
        return f"data:{kind};base64," + base64.b64encode(data).decode()

    inputs = [
        {"text": "a cat on a mat"},
        {"image": uri("image/png", cat)},
        {"text": "a dog", "image": uri("image/png", dog)},
        {"video": uri("video/mp4", clip)},
    ]
    group = ProcessGroup(path, tmp_path)
    try:
        r = httpx.post(
            group.leader.url + "/v1/embeddings",
            json={"model": path.name, "input": inputs},
            timeout=300,
        )
        assert r.status_code == 200, (r.text, group.follower_output())
        got = np.asarray([d["embedding"] for d in r.json()["data"]], np.float32)
        np.testing.assert_allclose(got, want, atol=2e-5)
        assert group.leader.stop() == 0, group.leader.log()
        assert group.follower.wait(30) == 0, group.follower_output()
    finally:
        group.cleanup()


def test_replica_mode_serves_a_copy_per_process(tiny_dir, tmp_path):
    """Mode (a): both processes join the group but each serves its own port on its own devices."""
    texts = varied_texts()[:6]
    reference = Embedder.from_pretrained(tiny_dir, compile_cache_dir=False).embed(
        texts, truncate=True
    )
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    common = [
        "--model", str(tiny_dir), "--distributed", "--multihost", "replica",
        "--coordinator-address", f"127.0.0.1:{free_port()}", "--num-processes", "2", *GRID,
    ]  # fmt: skip
    second_port = free_port()
    log = (tmp_path / "second.log").open("wb")
    second = subprocess.Popen(
        [sys.executable, "-m", "jaxembed.cli", "serve", *common, "--process-id", "1",
         "--host", "127.0.0.1", "--port", str(second_port)],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    first = None
    try:
        first = ServerProcess(*common, "--process-id", "0", env=env)
        second_url = f"http://127.0.0.1:{second_port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(second_url + "/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline and second.poll() is None, "second replica not ready"
            time.sleep(0.2)
        for url in (first.url, second_url):
            assert np.abs(_embed(url, texts) - reference).max() <= 1e-5
        assert "mesh data=4,model=1" in first.log()  # its own 4 devices, not all 8
        second.send_signal(signal.SIGTERM)
        assert first.stop() == 0, first.log()
        assert second.wait(30) == 0
    finally:
        for proc in (second, first.proc if first else None):
            if proc is not None and proc.poll() is None:
                proc.kill()
        log.close()
