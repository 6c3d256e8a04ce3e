"""Runs tests/mesh in a child process with 8 CPU devices (the flag must precede JAX's start)."""

from __future__ import annotations

import os

from tests.helpers import run_pytest_in_child


def test_mesh_suite_on_eight_cpu_devices():
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()
    output = run_pytest_in_child(["tests/mesh"], env, timeout=1200)
    assert "skipped" not in output, output[-2000:]
