"""Warm-up from cold: programs compile side by side, each exactly once; a model is ready once
its shortest and longest lengths have their largest batch; meanwhile inputs are planned into
compiled lengths only, and a batch whose own program is still compiling runs in a larger
compiled bucket (the same vectors) instead of waiting for a compile."""

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
    short, medium = _tokens(1, 12), _tokens(8, 30)
    reference = Embedder.from_pretrained(tiny_dir, compile_cache_dir=False, packing=packing, **GRID)
    expected = [reference.embed_token_lists(short), reference.embed_token_lists(medium)]
    embedder = Embedder.from_pretrained(tiny_dir, compile_cache_dir=False, packing=packing, **GRID)
    runner = embedder.runner
    monkeypatch.setenv(runner_module.COMPILE_THREADS_ENV, "2")  # the background gets one
    hold = threading.Event()
    original = runner_module.BucketRunner._compile_rest

    def held(self, *args):  # the background half waits until the test lets it go
        hold.wait(timeout=60)
        original(self, *args)

    monkeypatch.setattr(runner_module.BucketRunner, "_compile_rest", held)
    runner.warmup(background=True)
    compiled = runner._packed_compiled if packing else runner._compiled
    ready = {Bucket(8, 16), Bucket(4, 64)}
    assert set(compiled) == ready  # the largest batch of the shortest and longest length
    assert runner.planning_grid().seq_lengths == (16, 64)
    got = embedder.embed_token_lists(short)  # wants 1x16, not compiled yet
    assert runner.substitutions == 1 and set(compiled) == ready  # no compile happened
    np.testing.assert_allclose(got, expected[0], atol=1e-6)
    got = embedder.embed_token_lists(medium)  # 8 x 30 tokens: no 8x32 program, planned at 64
    assert set(compiled) == ready
    np.testing.assert_allclose(got, expected[1], atol=1e-6)
    hold.set()
    runner._background.join(timeout=120)
    assert len(compiled) == len(embedder.grid.buckets())
    assert runner.planning_grid() == embedder.grid
    # Behind traffic, the most useful first: the largest batch of the length still missing,
    # then single rows, then the rest, shorter lengths first.
    background = [b for b, _ in runner.compile_log if b not in ready and b != Bucket(8, 32)]
    assert runner.compile_log[2][0] == Bucket(8, 32)
    assert background == [Bucket(1, s) for s in (16, 32, 64)] + [
        Bucket(2, 16),
        Bucket(4, 16),
        Bucket(2, 32),
        Bucket(4, 32),
        Bucket(2, 64),
    ]
    before = runner.substitutions
    embedder.embed_token_lists(short)
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


def test_a_program_over_the_memory_budget_is_capped_as_it_compiles(tiny_dir):
    """The start-up memory check compiles only the lengths /ready waits for; a later program
    over the budget is never kept, its length's batches are capped below it, and the inputs
    that wanted it run in the smaller batches (the same vectors)."""
    from jaxembed.engine.batching.batcher import is_out_of_memory
    from jaxembed.errors import DeviceMemoryError

    texts = _tokens(8, 30)  # one 8x32 batch on the full grid
    options = {"compile_cache_dir": False, "packing": False, **GRID}
    reference = Embedder.from_pretrained(tiny_dir, **options)
    expected = reference.embed_token_lists(texts)
    half, full = (reference.runner.memory(Bucket(b, 32)).total_bytes for b in (4, 8))
    assert half < full
    embedder = Embedder.from_pretrained(tiny_dir, **options)
    runner = embedder.runner
    runner.memory_budget = (half + full) // 2
    with pytest.raises(DeviceMemoryError, match=r"bucket 8x32 needs") as raised:
        runner._compile(Bucket(8, 32))
    assert is_out_of_memory(raised.value)  # the batcher retries such a batch in halves
    assert Bucket(8, 32) not in runner._compiled and embedder.grid.max_rows(32) == 4
    np.testing.assert_allclose(embedder.embed_token_lists(texts), expected, atol=1e-6)
    assert Bucket(4, 32) in runner._compiled and Bucket(8, 32) not in runner._compiled
