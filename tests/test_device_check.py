"""tools/device_check.py stays runnable: its quick mode on the CPU passes and prints its table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_device_check_quick_on_cpu(tmp_path):
    out = tmp_path / "table.md"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "tools.device_check",
            "--quick",
            "--out",
            str(out),
            "--json",
            str(tmp_path / "check.json"),
            "--workdir",
            str(tmp_path / "work"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    table = out.read_text()
    sections = ("parity vs xla", "throughput", "memory vs plan", "cold start", "host path")
    for section in (*sections, "server over HTTP"):
        assert f"| {section} |" in table, table
    assert "**NO**" not in table
    assert "| qwen3 (packed) | 4x64 | blocked (ran blocked) | float32 |" in table
    stages = {s["stage"]: s for s in json.loads((tmp_path / "check.json").read_text())["stages"]}
    assert stages["server"]["singles64"]["requests"] > 0  # every answer was checked
    assert stages["cold"]["warm_cache"]["cache_hits"] > 0
