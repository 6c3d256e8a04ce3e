"""Mesh tests need 8 devices: on the CPU, XLA_FLAGS=--xla_force_host_platform_device_count=8.

The flag must be set before JAX starts, so the main test run executes this
directory in a child process with the flag (tests/test_mesh_suite.py) and
skips it in its own single-device process.
"""

from __future__ import annotations

import jax
import pytest

MESH_DEVICES = 8


def pytest_collection_modifyitems(config, items):
    if jax.device_count() >= MESH_DEVICES:
        return
    skip = pytest.mark.skip(reason="needs 8 devices; runs via tests/test_mesh_suite.py")
    for item in items:
        if "tests/mesh/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(skip)
