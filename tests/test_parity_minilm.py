"""Real all-MiniLM-L6-v2: jaxembed vs sentence-transformers (torch) on varied texts."""

from __future__ import annotations

import numpy as np
import pytest

from jaxembed.api import Embedder
from jaxembed.errors import InputTooLongError, InvalidInputError


def _row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def reference(st_model, corpus):
    return st_model.encode(corpus, batch_size=32, convert_to_numpy=True)


def test_corpus_covers_the_edge_cases(embedder, corpus):
    assert len(corpus) >= 200
    lengths = [len(t) for t in embedder.tokenize(corpus, truncate=True)]
    assert max(lengths) == embedder.max_length  # some texts were truncated at the limit
    assert min(lengths) <= 4
    assert any(ord(c) > 127 for text in corpus for c in text)


def test_float32_parity_every_row(embedder, corpus, reference):
    ours = embedder.embed(corpus, truncate=True)
    cos = _row_cosines(ours, reference)
    assert cos.min() >= 0.99999, f"worst row {int(cos.argmin())}: cos={cos.min():.7f}"
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_bfloat16_parity_every_row(embedder, corpus, reference):
    bf16 = Embedder.from_pretrained(None, dtype="bfloat16", compile_cache_dir=False)
    assert bf16.model.dtype == np.dtype("bfloat16")
    ours = bf16.embed(corpus, truncate=True)
    assert ours.dtype == np.float32  # pooling and normalisation stay in float32
    cos = _row_cosines(ours, reference)
    assert cos.min() >= 0.999, f"worst row {int(cos.argmin())}: cos={cos.min():.5f}"


def test_left_truncation_keeps_the_end(embedder):
    text = "alpha " * 400 + "omega ending"
    right = embedder.tokenize([text], truncate=True)[0]
    left = embedder.tokenize([text], truncate=True, truncation_direction="left")[0]
    assert len(right) == len(left) == embedder.max_length
    assert embedder.tokenizer.decode(left).endswith("omega ending")
    assert not np.allclose(
        embedder.embed([text], truncate=True),
        embedder.embed([text], truncate=True, truncation_direction="left"),
    )


def test_empty_after_strip_is_rejected(embedder):
    with pytest.raises(InvalidInputError, match=r"input\[1\] is empty") as info:
        embedder.embed(["fine", "  \n\t "])
    assert info.value.index == 1


def test_over_long_without_truncation_is_rejected(embedder):
    with pytest.raises(InputTooLongError, match="maximum of 256") as info:
        embedder.embed(["short", "word " * 400])
    assert info.value.index == 1 and info.value.num_tokens > 256


def test_token_ids_equal_text(embedder):
    texts = [
        "The cat sits on the mat.",
        "A much longer sentence about quantum chromodynamics and gluons.",
    ]
    ids = [t.tolist() for t in embedder.tokenize(texts)]
    np.testing.assert_array_equal(embedder.embed(ids), embedder.embed(texts))
    np.testing.assert_array_equal(embedder.embed(ids[0]), embedder.embed(texts[0]))


def test_token_ids_outside_vocabulary_are_rejected(embedder):
    with pytest.raises(InvalidInputError, match="outside the vocabulary"):
        embedder.embed([[101, 30522, 102]])
    with pytest.raises(InvalidInputError, match="outside the vocabulary"):
        embedder.embed([[101, -1, 102]])


@pytest.mark.parametrize("bad", [[], [[]], [1, "a"], [None], [[1, 2], "x"], [True, False], 5])
def test_malformed_inputs_are_rejected(embedder, bad):
    with pytest.raises(InvalidInputError):
        embedder.embed(bad)


def test_matryoshka_truncation_renormalises(embedder):
    full = embedder.embed(["semantic search"])
    short = embedder.embed(["semantic search"], dimensions=64)
    assert short.shape == (1, 64)
    np.testing.assert_allclose(np.linalg.norm(short), 1.0, atol=1e-6)
    np.testing.assert_allclose(short[0], full[0, :64] / np.linalg.norm(full[0, :64]), atol=1e-6)
    for bad in (0, 385, -3):
        with pytest.raises(InvalidInputError, match="dimensions"):
            embedder.embed(["x"], dimensions=bad)
