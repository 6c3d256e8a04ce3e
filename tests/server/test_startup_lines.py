"""Start-up explains itself: where the server listens, when it is ready, and a taken port as
one line and exit status 2 (before any model is loaded)."""

from __future__ import annotations

import re
import subprocess
import sys
import time


def test_the_log_says_where_it_listens_and_when_it_is_ready(server):
    log = server.log_path.read_text(errors="replace")
    assert f"listening on http://127.0.0.1:{server.port}" in log
    ready = re.search(r"ready: 1 model, (\d+) buckets? compiled in ([\d.]+) s", log)
    assert ready and int(ready.group(1)) >= 1, log[-3000:]
    assert log.index("listening on") < ready.start()
    assert "Unable to initialize backend" not in log  # JAX's probing stays quiet


def test_a_taken_port_is_one_line_and_exit_2(server):
    started = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-m", "jaxembed.cli", "serve", "--port", str(server.port)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2
    lines = [line for line in (run.stdout + run.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert f"cannot listen on http://127.0.0.1:{server.port}: Address already in use" in lines[0]
    assert time.monotonic() - started < 60  # refused before loading any model


def test_the_autotune_option_becomes_one_xla_flag(monkeypatch):
    import dataclasses
    import os

    from jaxembed_server.config import ServerConfig
    from jaxembed_server.main import apply_xla_options

    monkeypatch.setenv(
        "XLA_FLAGS", "--xla_gpu_autotune_level=4 --xla_force_host_platform_device_count=2"
    )
    apply_xla_options(dataclasses.replace(ServerConfig(), xla_gpu_autotune_level=0))
    flags = os.environ["XLA_FLAGS"].split()
    assert "--xla_gpu_autotune_level=0" in flags and "--xla_gpu_autotune_level=4" not in flags
    assert "--xla_force_host_platform_device_count=2" in flags
    monkeypatch.setenv("XLA_FLAGS", "")
    apply_xla_options(ServerConfig())  # not given: XLA's default, no flag
    assert os.environ["XLA_FLAGS"] == ""
