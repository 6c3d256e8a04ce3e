"""Real `jaxembed serve` processes on 127.0.0.1, shared per module."""

from __future__ import annotations

import pytest

from tests.helpers import ServerProcess

POISON_TOKEN = 29999


@pytest.fixture(scope="package")
def server():
    proc = ServerProcess(env={"JAXEMBED_TEST_FAULT_TOKEN_ID": str(POISON_TOKEN)})
    yield proc
    assert proc.stop() == 0, proc.log()


@pytest.fixture(scope="package")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server.url + "/v1", api_key="EMPTY", max_retries=0, timeout=60)
