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
