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

from tests.helpers import ServerProcess, save_tiny_cross_encoder

KEY = "schemathesis-key"


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory):
    """MiniLM plus a tiny cross-encoder, so the rerank and score routes score for real."""
    reranker = tmp_path_factory.mktemp("schemathesis-reranker")
    save_tiny_cross_encoder("bert", reranker, seed=2)
    proc = ServerProcess(
        "--api-key",
        KEY,
        "--seq-lengths",
        "16,32,64,128,256",
        "--model",
        "all-minilm-l6-v2",
        "--model",
        f"rr={reranker}",
    )
    yield proc
    assert proc.stop() == 0, proc.log()


# schemathesis' CLI under a raised recursion limit: CPython 3.11.7's AST validator can fail
# with "AST constructor recursion depth mismatch" when hypothesis parses a lambda's source
# (to describe a strategy) deep inside its recursive JSON-schema strategies.
SCHEMATHESIS = (
    "import runpy, sys; sys.setrecursionlimit(20_000); sys.argv[0] = 'schemathesis'; "
    "runpy.run_module('schemathesis.cli', run_name='__main__')"
)


CPYTHON_AST_BUG = "AST constructor recursion depth mismatch"


def _schemathesis(url: str, cwd, seed: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-c",
            SCHEMATHESIS,
            "run",
            url + "/openapi.json",
            "-H",
            f"Authorization: Bearer {KEY}",
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
            # The documented examples are sent by test_openapi_examples_are_answered instead:
            # hypothesis' example phase trips a CPython 3.11 AST recursion-depth SystemError.
            "--phases",
            "coverage,fuzzing",
            "--max-time",
            "35",
            "--workers",
            "2",
            "--seed",
            str(seed),
            "--request-timeout",
            "60",
        ],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_schemathesis_finds_no_failures(keyed_server, tmp_path):
    run = _schemathesis(keyed_server.url, tmp_path, 20261125)
    if run.returncode != 0 and CPYTHON_AST_BUG in run.stdout + run.stderr:
        # That error is raised inside hypothesis' own strategy description (CPython 3.11.7's
        # AST validator), never by a server response: one more run with another seed.
        run = _schemathesis(keyed_server.url, tmp_path, 20261126)
    report = run.stdout[-8000:] + run.stderr[-2000:]
    assert run.returncode == 0, report
    assert "21 passed" in run.stdout, report  # every operation was exercised
    # The server is still healthy afterwards.
    assert httpx.get(keyed_server.url + "/ready", timeout=5).status_code == 200
