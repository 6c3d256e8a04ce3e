"""10,000 requests from 64 concurrent clients, mixed good and bad, every answer checked.

A tiny random BERT keeps the device work negligible, so the test measures the
server (parsing, batching, priorities, encoding, error paths) within CI's
budget. Zero mismatches, zero 5xx, every bad request gets its own 4xx, and
afterwards no queued work, no leaked event-loop tasks and bounded RSS.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from jaxembed.api import Embedder
from tests.helpers import ServerProcess, save_tiny_model
from tools.soak import build_reference, run_soak, server_stats, text_pool

REQUESTS = 10_000
CLIENTS = 64
RSS_GROWTH_LIMIT_MIB = 64


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-bert-soak")
    save_tiny_model("bert", path, seed=11)
    return path


def test_ten_thousand_mixed_requests_from_64_clients(tiny_dir, capsys):
    embedder = Embedder.from_pretrained(tiny_dir, compile_cache_dir=False)
    ref = build_reference(embedder, text_pool(embedder))
    assert len(ref.vectors) >= 100
    server = ServerProcess("--model", str(tiny_dir))
    try:
        url, pid = server.url, server.proc.pid
        # A first round settles allocator pools and fills every bucket's buffers.
        warm = asyncio.run(run_soak(url, ref, requests=1_000, clients=CLIENTS, seed=1))
        assert warm.mismatches == warm.server_errors == warm.wrong_errors == 0, warm.summary()
        before = server_stats(url, pid)

        report = asyncio.run(run_soak(url, ref, requests=REQUESTS, clients=CLIENTS, seed=2))
        after = server_stats(url, pid)
        report.server = {"before": before, "after": after}
        summary = report.summary()
        with capsys.disabled():
            print("\nsoak:", json.dumps(summary))

        assert report.requests == REQUESTS and report.transport_errors == 0, summary
        assert report.server_errors == 0, summary
        assert report.mismatches == 0, summary
        assert report.wrong_errors == 0, summary
        assert report.bad > 0.03 * REQUESTS and report.rows_checked > REQUESTS, summary
        # Nothing left behind: no queued or active requests, no task per finished request.
        assert after["jaxembed_active_requests"] == 0 and after["jaxembed_queue_requests"] == 0
        assert after["jaxembed_event_loop_tasks"] <= before["jaxembed_event_loop_tasks"] + 2
        assert after["rss_mib"] - before["rss_mib"] < RSS_GROWTH_LIMIT_MIB, summary
    finally:
        assert server.stop() == 0, server.log()
