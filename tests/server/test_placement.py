"""Where several models live: their own device subsets, and one memory plan for all of them.

The CPU stands in for an accelerator host with 4 devices (XLA's host platform device count).
"""

from __future__ import annotations

import subprocess
import sys

import httpx
import numpy as np
import pytest

from jaxembed.api import Embedder
from tests.helpers import ServerProcess, free_port, save_tiny_decoder

FOUR_DEVICES = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}


@pytest.fixture(scope="module")
def decoder_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("placement") / "decoder"
    save_tiny_decoder("mistral", path, seed=41)
    return path


def _serve_and_fail(*argv: str) -> str:
    """Run `jaxembed serve` expecting a start-up error; its log."""
    run = subprocess.run(
        [sys.executable, "-m", "jaxembed.cli", "serve", "--port", str(free_port()), *argv],
        capture_output=True,
        text=True,
        timeout=600,
        env={**__import__("os").environ, **FOUR_DEVICES},
    )
    assert run.returncode == 2, run.stdout + run.stderr
    return run.stdout + run.stderr


def test_models_on_their_own_devices(decoder_dir, tmp_path):
    config = tmp_path / "models.yaml"
    config.write_text(
        "models:\n"
        "  - name: minilm\n    model: all-MiniLM-L6-v2\n    devices: 0-1\n"
        f"  - name: decoder\n    model: {decoder_dir}\n    dtype: float32\n    devices: 2,3\n"
    )
    server = ServerProcess("--config", str(config), "--no-warmup", env=FOUR_DEVICES)
    try:
        log = server.log()
        assert "loaded minilm" in log and "over devices [0, 1]" in log
        assert "loaded decoder" in log and "over devices [2, 3]" in log
        texts = ["placed on two devices", "the other model has the other two"]
        for name, reference in (
            ("minilm", Embedder.from_pretrained(compile_cache_dir=False)),
            (
                "decoder",
                Embedder.from_pretrained(decoder_dir, dtype="float32", compile_cache_dir=False),
            ),
        ):
            body = httpx.post(
                server.url + "/v1/embeddings", json={"model": name, "input": texts}, timeout=120
            ).json()
            got = np.asarray([d["embedding"] for d in body["data"]], dtype=np.float32)
            assert np.abs(got - reference.embed(texts)).max() <= 1e-5, name
    finally:
        assert server.stop() == 0, server.log()


def test_devices_beyond_the_host_are_refused(tmp_path):
    config = tmp_path / "models.yaml"
    config.write_text("models:\n  - model: all-MiniLM-L6-v2\n    devices: 2-5\n")
    log = _serve_and_fail("--config", str(config))
    assert "devices [2, 3, 4, 5] but this process serves 4 device(s)" in log


def test_memory_plan_counts_every_model(tmp_path):
    """Two MiniLM copies: each fits the plan alone, together their parameters do not."""
    log = _serve_and_fail(
        "--model", "a=all-MiniLM-L6-v2", "--model", "b=all-MiniLM-L6-v2",
        "--device-memory-gib", "0.15", "--seq-lengths", "16,32",
    )  # fmt: skip
    assert "cannot start" in log
    assert "parameters per device, largest first: all-minilm-l6-v2 0.08 GiB" in log


def test_the_same_name_for_two_models_is_refused():
    log = _serve_and_fail(
        "--model", "all-MiniLM-L6-v2", "--model", "all-MiniLM-L6-v2", "--no-warmup"
    )
    assert "is given to two models" in log
