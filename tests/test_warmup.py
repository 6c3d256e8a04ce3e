"""Warm-up from cold: programs compile side by side, each exactly once; a model is ready once
every length has its largest batch; a batch whose own program is still compiling runs in a
larger compiled bucket (the same vectors) instead of waiting for a compile."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from jaxembed.api import Embedder
from jaxembed.engine.batching.buckets import Bucket
from jaxembed.engine.device import runner as runner_module
from tests.helpers import save_tiny_model

GRID = {"seq_lengths": (16, 32, 64), "batch_sizes": (1, 2, 4, 8), "token_budget": 256}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-warmup")
    save_tiny_model("bert", path, seed=7)
    return path


def _tokens(count: int, length: int) -> list[np.ndarray]:
    rng = np.random.default_rng(length)
    return [rng.integers(1000, 2000, length).astype(np.int32) for _ in range(count)]


@pytest.mark.parametrize("packing", [False, True], ids=["padded", "packed"])
def test_a_batch_runs_in_a_larger_compiled_bucket_while_the_rest_compiles(
    tiny_dir, monkeypatch, packing
):
    reference = Embedder.from_pretrained(
        tiny_dir, compile_cache_dir=False, packing=packing, **GRID
    ).embed_token_lists(_tokens(1, 12))
    embedder = Embedder.from_pretrained(tiny_dir, compile_cache_dir=False, packing=packing, **GRID)
    runner = embedder.runner
    hold = threading.Event()
    original = runner_module.BucketRunner._compile_rest

    def held(self, *args):  # the background half waits until the test lets it go
        hold.wait(timeout=60)
        original(self, *args)

    monkeypatch.setattr(runner_module.BucketRunner, "_compile_rest", held)
    runner.warmup(background=True)
    compiled = runner._packed_compiled if packing else runner._compiled
    covering = {Bucket(8, 16), Bucket(8, 32), Bucket(4, 64)}
    assert set(compiled) == covering  # ready with the largest batch of every length only
    got = embedder.embed_token_lists(_tokens(1, 12))  # wants 1x16, not compiled yet
    assert runner.substitutions == 1 and set(compiled) == covering  # no compile happened
    np.testing.assert_allclose(got, reference, atol=1e-6)
    hold.set()
    runner._background.join(timeout=120)
    assert len(compiled) == len(embedder.grid.buckets())
    before = runner.substitutions
    embedder.embed_token_lists(_tokens(1, 12))
    assert runner.substitutions == before  # its own program now


def test_every_program_compiles_once_side_by_side(tiny_dir, monkeypatch):
    monkeypatch.setenv(runner_module.COMPILE_THREADS_ENV, "4")
    embedder = Embedder.from_pretrained(tiny_dir, compile_cache_dir=False, **GRID)
    threads = set()
    original = runner_module.BucketRunner._build

    def watched(self, *args):
        threads.add(threading.current_thread().name)
        return original(self, *args)

    monkeypatch.setattr(runner_module.BucketRunner, "_build", watched)
    seen = []
    embedder.runner.warmup(lambda i, n, bucket: seen.append((i, n, bucket)))
    buckets = embedder.grid.buckets()
    assert [b for b, _ in embedder.runner.compile_log] and sorted(
        (b for b, _ in embedder.runner.compile_log), key=lambda b: (b.seq, b.batch)
    ) == sorted(buckets, key=lambda b: (b.seq, b.batch))
    assert [i for i, _, _ in seen] == list(range(1, len(buckets) + 1))
    assert len(threads) > 1  # compiled on several threads
