"""Inputs longer than the model: `chunking` embeds windows and pools them, through the real server."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import MINILM_DIR

MODEL = "all-minilm-l6-v2"


@pytest.fixture(scope="module")
def long_text(corpus):
    """About 3,000 tokens of real English prose (stdlib docstrings joined)."""
    from transformers import BertTokenizerFast

    tokenizer = BertTokenizerFast.from_pretrained(MINILM_DIR)
    parts, count = [], 0
    for text in corpus:
        if text.isascii() and len(text) > 200:
            parts.append(text)
            count += len(tokenizer(text, add_special_tokens=False)["input_ids"])
        if count >= 3000:
            break
    return " ".join(parts)


def _independent_windows(text: str) -> list[list[int]]:
    """The windows as a reader of the docs would build them: the text's own tokens in slices
    of 254, each framed by [CLS] ... [SEP] (MiniLM's special tokens)."""
    from transformers import BertTokenizerFast

    tokenizer = BertTokenizerFast.from_pretrained(MINILM_DIR)
    body = tokenizer(text, add_special_tokens=False)["input_ids"]
    width = 256 - 2
    return [
        [tokenizer.cls_token_id, *body[i : i + width], tokenizer.sep_token_id]
        for i in range(0, len(body), width)
    ]


def _weighted_mean(vectors: np.ndarray, lengths: list[int]) -> np.ndarray:
    mean = (vectors * np.asarray(lengths, dtype=np.float64)[:, None]).sum(0)
    return mean / np.linalg.norm(mean)


def test_long_text_is_the_token_weighted_mean_of_its_windows(client, embedder, long_text):
    windows = _independent_windows(long_text)
    assert len(windows) >= 11  # ~3,000 tokens
    expected = _weighted_mean(embedder.embed(windows), [len(w) for w in windows])
    response = client.embeddings.create(
        model=MODEL, input=[long_text, "a short one"], extra_body={"chunking": True}
    )
    got = np.asarray(response.data[0].embedding, dtype=np.float32)
    assert float(got @ expected) >= 0.99999
    short = np.asarray(response.data[1].embedding, dtype=np.float32)
    np.testing.assert_allclose(short, embedder.embed(["a short one"])[0], atol=1e-6)
    short_tokens = len(embedder.tokenize(["a short one"])[0])
    assert response.usage.prompt_tokens == sum(len(w) for w in windows) + short_tokens


def test_chunking_token_ids_and_dimensions(client, embedder, long_text):
    ids = [int(t) for w in _independent_windows(long_text) for t in w[1:-1]]  # plain ids
    slices = [ids[i : i + 256] for i in range(0, len(ids), 256)]
    expected = _weighted_mean(embedder.embed(slices), [len(s) for s in slices])
    response = client.embeddings.create(model=MODEL, input=[ids], extra_body={"chunking": True})
    got = np.asarray(response.data[0].embedding, dtype=np.float32)
    assert float(got @ expected) >= 0.99999
    assert response.usage.prompt_tokens == len(ids)
    reduced = client.embeddings.create(
        model=MODEL, input=long_text, dimensions=64, extra_body={"chunking": True}
    )
    small = np.asarray(reduced.data[0].embedding)
    assert small.shape == (64,) and abs(np.linalg.norm(small) - 1) < 1e-5


def test_over_long_without_chunking_and_beyond_max_embed_len(server, long_text):
    import httpx

    r = httpx.post(server.url + "/v1/embeddings", json={"input": long_text, "model": MODEL})
    assert r.status_code == 400
    message = r.json()["error"]["message"]
    assert "more than this model's maximum of 256" in message
    assert "truncate=true" in message and "chunking=true" in message
    # The default --max-embed-len is 16 x 256 = 4,096 tokens per input.
    huge = " ".join([long_text] * 2)
    r = httpx.post(
        server.url + "/v1/embeddings",
        json={"input": ["fine", huge], "model": MODEL, "chunking": True},
        timeout=60,
    )
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == "input[1]" or "input[1]" in error["message"]
    assert "4096" in error["message"] and "--max-embed-len" in error["message"]
    r = httpx.post(
        server.url + "/v1/embeddings",
        json={"input": "x", "model": MODEL, "chunking": "yes"},
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "chunking"
