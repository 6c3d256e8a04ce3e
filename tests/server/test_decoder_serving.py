"""A tiny decoder checkpoint served end to end: instructions change the query vector as the card says."""

from __future__ import annotations

import numpy as np
import pytest

from jaxembed.api import Embedder
from jaxembed.weights.loader import load_model
from tests.helpers import ServerProcess, save_tiny_decoder

TEMPLATE = "Instruct: {instruction}\nQuery: "


@pytest.fixture(scope="module")
def decoder_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-qwen3")
    save_tiny_decoder("qwen3", path, seed=21)
    card = load_model(path).card.replace(
        name="tiny-qwen3", instruction_template=TEMPLATE, matryoshka_dims=(16, 32)
    )
    card.save(path / "card.json")
    return path


@pytest.fixture(scope="module")
def decoder_server(decoder_dir):
    proc = ServerProcess(
        "--model",
        str(decoder_dir),
        "--dtype",
        "float32",
        "--no-warmup",
        "--chunking",  # over-long inputs are chunked unless a request says otherwise
        "--max-embed-len",
        "300",
    )
    yield proc
    assert proc.stop() == 0, proc.log()


@pytest.fixture(scope="module")
def reference(decoder_dir):
    return Embedder(load_model(decoder_dir, dtype="float32"))


def _embed(server, **kwargs):
    from openai import OpenAI

    client = OpenAI(base_url=server.url + "/v1", api_key="EMPTY", max_retries=0)
    extra = {k: kwargs.pop(k) for k in ("input_type", "instruction") if k in kwargs}
    response = client.embeddings.create(model="tiny-qwen3", extra_body=extra or None, **kwargs)
    return np.array([d.embedding for d in response.data], dtype=np.float32), response


def test_query_document_and_instruction(decoder_server, reference):
    q = ["where do penguins live?", "how tall is Mount Everest?"]
    as_query, r = _embed(decoder_server, input=q, input_type="query")
    as_document, _ = _embed(decoder_server, input=q, input_type="document")
    plain, _ = _embed(decoder_server, input=q)
    custom, _ = _embed(decoder_server, input=q, instruction="Find encyclopedia articles")
    np.testing.assert_allclose(as_query, reference.embed(q, prompt_name="query"), atol=1e-6)
    np.testing.assert_allclose(as_document, plain, atol=1e-6)
    np.testing.assert_allclose(
        custom,
        reference.embed([TEMPLATE.format(instruction="Find encyclopedia articles") + t for t in q]),
        atol=1e-6,
    )
    assert (as_query * plain).sum(1).max() < 0.9999  # the instruction really changed the vectors
    # usage counts the prompt tokens and the appended EOS
    assert r.usage.prompt_tokens == sum(len(t) for t in reference.tokenize(q, prompt_name="query"))


def test_matryoshka_dims_from_the_card(decoder_server, reference):
    v, _ = _embed(decoder_server, input="nested dims", dimensions=16)
    np.testing.assert_allclose(v, reference.embed("nested dims", dimensions=16), atol=1e-6)
    from openai import BadRequestError

    with pytest.raises(BadRequestError, match="one of \\[16, 32, 64\\]"):
        _embed(decoder_server, input="x", dimensions=20)


def test_server_chunking_default_with_eos_per_window(decoder_server, reference):
    """`--chunking`: an input over the card's 64 tokens is embedded in windows, each ending in
    the EOS the model pools; a request can still ask for the 400 instead."""
    import httpx

    text = " ".join(f"word{i} and more" for i in range(40))  # ~150 tokens
    assert len(reference.tokenize([text], truncate=True)[0]) == reference.max_length
    plan = reference.tokenize_windows([text])
    assert len(plan.windows) >= 3 and all(w[-1] == reference.tokenizer.eos_id for w in plan.windows)
    got, response = _embed(decoder_server, input=[text])
    expected = reference.embed([text], chunking=True)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert response.usage.prompt_tokens == sum(len(w) for w in plan.windows)
    body = {"input": text, "model": "tiny-qwen3", "chunking": False}
    r = httpx.post(decoder_server.url + "/v1/embeddings", json=body)
    assert r.status_code == 400 and "chunking=true" in r.json()["error"]["message"]
    body = {"input": text * 3, "model": "tiny-qwen3"}
    r = httpx.post(decoder_server.url + "/v1/embeddings", json=body)
    assert r.status_code == 400 and "--max-embed-len" in r.json()["error"]["message"]
