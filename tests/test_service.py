"""`EmbeddingService` in-process: the async pipeline the server and `Embedder.embed` share."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from jaxembed.engine.request.jobs import EmbedJob, EmbedOptions
from jaxembed.engine.request.limits import QueueLimits
from jaxembed.engine.service.backend import ServiceHooks
from jaxembed.engine.service.config import ServiceConfig
from jaxembed.engine.service.embedding import EmbeddingService
from jaxembed.engine.service.rows import local_service
from jaxembed.errors import DeadlineError, OverloadedError, RequestTooLargeError

TEXTS = [
    "the service owns the pipeline",
    "cache, prompts, truncation",
    "the service owns the pipeline",
]


@pytest.fixture(scope="module")
def service(embedder):
    lookups: list[tuple[int, int]] = []
    svc = local_service(
        embedder,
        ServiceConfig(cache_bytes=2**20, max_request_tokens=64),
        name="minilm",
        hooks=ServiceHooks(on_cache=lambda hits, misses: lookups.append((hits, misses))),
    )
    svc.start(warmup=False)
    svc.lookups = lookups
    yield svc
    assert svc.close(timeout=10)


def _run(service: EmbeddingService, job: EmbedJob):
    return asyncio.run(service.embed(job))


def test_vectors_usage_and_the_cache(service, embedder):
    result = _run(service, EmbedJob(TEXTS))
    tokens = [len(t) for t in embedder.tokenize(TEXTS)]
    assert result.tokens == sum(tokens)
    np.testing.assert_array_equal(result.vectors, embedder.embed(TEXTS))
    assert service.lookups[-1] == (0, 3)  # the repeated text is computed once, counted a miss
    again = _run(service, EmbedJob(TEXTS[:1], EmbedOptions(dimensions=32)))
    assert service.lookups[-1] == (1, 0)
    full = result.vectors[0][:32]
    np.testing.assert_allclose(again.vectors[0], full / np.linalg.norm(full), atol=1e-6)


def test_limits_are_library_errors(service):
    with pytest.raises(RequestTooLargeError, match="maximum per request is 64"):
        _run(service, EmbedJob(["word " * 100], EmbedOptions(truncate=True)))
    for second in range(8):  # pretend: 8 batches measured at 1,000 tokens/s
        service.backend.text.throughput.observe(1000, second, second + 1.0)
    try:
        late = EmbedOptions(deadline=time.monotonic() + 0.001)
        with pytest.raises(DeadlineError) as caught:
            _run(service, EmbedJob(["a text never seen before " * 8], late))
        assert caught.value.tokens > 0 and caught.value.expected_seconds > 0
    finally:
        service.backend.text.throughput = type(service.backend.text.throughput)()


def test_a_full_queue_refuses_before_any_work(embedder):
    svc = local_service(embedder, ServiceConfig(queue=QueueLimits(max_queued_requests=0)))
    with pytest.raises(OverloadedError, match="queue is full"):
        svc.check_capacity()
    svc.close(timeout=1)


def test_operator_ranges_replace_calibration(embedder, tmp_path):
    import json

    from jaxembed.quantization import quantize

    ranges = np.stack([-np.full(384, 0.2), np.full(384, 0.2)]).astype(np.float32)
    (tmp_path / "ranges.json").write_text(json.dumps(ranges.tolist()))
    svc = local_service(embedder, ServiceConfig(quantization_ranges=str(tmp_path / "ranges.json")))
    svc.start(warmup=False)
    try:
        floats = _run(svc, EmbedJob(TEXTS[:2])).vectors
        got = _run(svc, EmbedJob(TEXTS[:2], EmbedOptions(precision="int8"))).vectors
        np.testing.assert_array_equal(got, quantize(floats, "int8", ranges))
        assert svc.calibration.source == "ranges file ranges.json"
    finally:
        svc.close(timeout=5)
    (tmp_path / "bad.json").write_text("[[1, 2]]")
    with pytest.raises(ValueError, match="expected ranges of shape"):
        local_service(embedder, ServiceConfig(quantization_ranges=str(tmp_path / "bad.json")))


def test_calibration_is_computed_once_and_then_read_from_the_cache(embedder, tmp_path, monkeypatch):
    monkeypatch.setenv("JAXEMBED_HOME", str(tmp_path))
    first = local_service(embedder)
    first.start(warmup=False)
    try:
        got = _run(first, EmbedJob(TEXTS[:1], EmbedOptions(precision="uint8"))).vectors
        assert first.calibration.cache_path.exists()
        assert first.calibration.cache_path.is_relative_to(tmp_path / "calibration")
    finally:
        first.close(timeout=5)
    second = local_service(embedder)  # a restart: the cached vectors, no recomputation
    second.start(warmup=False)
    try:
        calls = []
        original = second._calibration_vectors
        second._calibration_vectors = lambda texts: calls.append(1) or original(texts)
        again = _run(second, EmbedJob(TEXTS[:1], EmbedOptions(precision="uint8"))).vectors
        assert calls == [] and (again == got).all()
        np.testing.assert_array_equal(
            second.calibration.full_ranges(), first.calibration.full_ranges()
        )
    finally:
        second.close(timeout=5)


@pytest.fixture
def sliced_service(embedder, monkeypatch):
    """A service that takes large requests in slices of 64 texts, as it does on an
    accelerator (on CPU devices it does not: the tokenizer and XLA would share the cores)."""
    import dataclasses

    import jaxembed.engine.service.slices as slices

    monkeypatch.setattr(slices, "SLICE_TEXTS", 64)
    batches: list[int] = []
    svc = local_service(
        embedder,
        ServiceConfig(max_request_tokens=30_000),
        name="sliced",
        hooks=ServiceHooks(on_batch=lambda stats: batches.append(stats.rows)),
    )
    svc.facts = dataclasses.replace(svc.facts, host_devices=False)
    svc.start(warmup=False)
    svc.batches, svc.slices = batches, []
    tokenize = svc.tokenizing.tokenize

    async def counting(inputs, options):
        svc.slices.append(len(inputs))
        return await tokenize(inputs, options)

    svc.tokenizing.tokenize = counting
    yield svc
    assert svc.close(timeout=10)


def test_a_large_request_in_slices_equals_one_call(sliced_service, embedder):
    from tests.texts import distinct_passages

    texts = distinct_passages(300)
    whole = embedder.embed(texts, truncate=True)
    result = _run(sliced_service, EmbedJob(texts, EmbedOptions(truncate=True)))
    assert sliced_service.slices == [64, 64, 64, 64, 44]
    np.testing.assert_allclose(result.vectors, whole, atol=2e-6)
    assert result.tokens == sum(len(t) for t in embedder.tokenize(texts, truncate=True))
    assert result.token_counts == [len(t) for t in embedder.tokenize(texts, truncate=True)]


def test_a_sliced_request_names_inputs_by_their_place_in_it(sliced_service):
    from jaxembed.errors import InputTooLongError, InvalidInputError

    texts = [f"text number {i}" for i in range(200)]
    sliced_service.batches.clear()
    with pytest.raises(InvalidInputError, match=r"input\[170\] is empty"):
        _run(sliced_service, EmbedJob([*texts[:170], " ", *texts[171:]]))
    assert sliced_service.batches == []  # refused before any slice ran
    with pytest.raises(InputTooLongError, match=r"input\[150\] has \d+ tokens") as e:
        _run(sliced_service, EmbedJob([*texts[:150], "word " * 400, *texts[151:]]))
    assert e.value.index == 150
    with pytest.raises(RequestTooLargeError, match="first 192 inputs have 38784 tokens"):
        _run(sliced_service, EmbedJob(["word " * 200] * 200, EmbedOptions(truncate=True)))
