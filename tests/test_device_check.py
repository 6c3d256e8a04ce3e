"""tools/device_check.py stays runnable: its quick mode on the CPU passes and prints its table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_device_check_quick_on_cpu(tmp_path):
    out = tmp_path / "table.md"
    run = subprocess.run(
        [sys.executable, "-m", "tools.device_check", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    table = out.read_text()
    for section in ("parity vs xla", "throughput", "memory vs plan"):
        assert f"| {section} |" in table
    assert "**NO**" not in table
    assert "| qwen3 (packed) | 4x64 | blocked (ran blocked) | float32 |" in table
