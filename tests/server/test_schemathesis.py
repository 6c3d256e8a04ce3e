"""schemathesis against the server's own /openapi.json: no 5xx, errors as documented, auth enforced.

Runs every check except `positive_data_acceptance`: whether a schema-valid
request is accepted also depends on token counts (a text longer than the
model's context is a documented 400), which a JSON schema cannot express.
"""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from tests.helpers import ServerProcess

KEY = "schemathesis-key"


@pytest.fixture(scope="module")
def keyed_server():
    proc = ServerProcess("--api-key", KEY, "--seq-lengths", "16,32,64,128,256")
    yield proc
    assert proc.stop() == 0, proc.log()


def test_schemathesis_finds_no_failures(keyed_server, tmp_path):
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "run",
            keyed_server.url + "/openapi.json",
            "-H",
            f"Authorization: Bearer {KEY}",
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
            "--max-time",
            "45",
            "--workers",
            "2",
            "--seed",
            "20261125",
            "--request-timeout",
            "60",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    report = run.stdout[-8000:] + run.stderr[-2000:]
    assert run.returncode == 0, report
    assert "15 passed" in run.stdout, report  # every operation was exercised
    # The server is still healthy afterwards.
    assert httpx.get(keyed_server.url + "/ready", timeout=5).status_code == 200
