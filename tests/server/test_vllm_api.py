"""vLLM's extensions on a real server: truncate_prompt_tokens, add_special_tokens, chat-form
`messages` (the model's chat template), /tokenize with `prompt`, /detokenize, /invocations,
and a 400 naming each vLLM field we do not implement."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
from transformers import AutoTokenizer

from jaxembed.api import Embedder
from jaxembed.registry import resolve_model
from tests.helpers import ServerProcess, save_tiny_decoder

TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
LONG = "the quick brown fox jumps over the lazy dog " * 40 + "and the very end"


def _post(server, path, body):
    return httpx.post(server.url + path, json=body, timeout=60)


def _vector(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.asarray(response.json()["data"][0]["embedding"], dtype=np.float32)


def test_truncate_prompt_tokens_keeps_the_last_tokens_as_vllm(server, client, embedder):
    got = client.embeddings.create(
        model="all-minilm-l6-v2", input=LONG, extra_body={"truncate_prompt_tokens": 12}
    )
    assert got.usage.prompt_tokens == 12
    # vLLM tokenizes with the HF tokenizer, truncation on the left by default.
    hf = AutoTokenizer.from_pretrained(resolve_model(None)[0], truncation_side="left")
    ids = hf(LONG, truncation=True, max_length=12)["input_ids"]
    np.testing.assert_allclose(got.data[0].embedding, embedder.embed([ids])[0], atol=1e-6)
    right = _post(server, "/v1/embeddings", {
        "input": LONG, "truncate_prompt_tokens": 12, "truncation_side": "right"})  # fmt: skip
    hf.truncation_side = "right"
    first = hf(LONG, truncation=True, max_length=12)["input_ids"]
    np.testing.assert_allclose(_vector(right), embedder.embed([first])[0], atol=1e-6)
    whole = _post(server, "/v1/embeddings", {"input": LONG, "truncate_prompt_tokens": -1})
    assert whole.json()["usage"]["prompt_tokens"] == 256


def test_add_special_tokens_false(server, embedder):
    got = _post(server, "/v1/embeddings", {"input": "hello world", "add_special_tokens": False})
    np.testing.assert_allclose(_vector(got), embedder.embed([[7592, 2088]])[0], atol=1e-6)
    assert got.json()["usage"]["prompt_tokens"] == 2


def test_tokenize_prompt_detokenize_and_invocations(server, embedder):
    vllm_form = _post(server, "/tokenize", {"prompt": "hello world"}).json()
    assert vllm_form["tokens"] == [101, 7592, 2088, 102] and vllm_form["count"] == 4
    ours = _post(server, "/tokenize", {"input": "hello world"}).json()
    assert ours["tokens"] == [[101, 7592, 2088, 102]]
    bare = _post(server, "/tokenize", {"prompt": "hello world", "add_special_tokens": False})
    assert bare.json()["tokens"] == [7592, 2088]
    assert _post(server, "/detokenize", {"tokens": [7592, 2088]}).json() == {
        "prompt": "hello world"
    }
    invoked = _post(server, "/invocations", {"input": "hello world"})
    np.testing.assert_allclose(_vector(invoked), embedder.embed(["hello world"])[0], atol=1e-6)


@pytest.mark.parametrize(
    "path, body, param",
    [
        (
            "/v1/embeddings",
            {"input": "x", "truncate_prompt_tokens": 1000},
            "truncate_prompt_tokens",
        ),
        ("/v1/embeddings", {"input": "x", "truncate_prompt_tokens": -2}, "truncate_prompt_tokens"),
        ("/v1/embeddings", {"input": "x", "truncate_prompt_tokens": "5"}, "truncate_prompt_tokens"),
        ("/v1/embeddings", {"input": "x", "add_special_tokens": "no"}, "add_special_tokens"),
        ("/v1/embeddings", {"input": "x", "embed_dtype": "bfloat16"}, "embed_dtype"),
        ("/v1/embeddings", {"input": "x", "chat_template": "{{ x }}"}, "chat_template"),
        (  # a request's own template needs --trust-request-chat-template
            "/v1/embeddings",
            {"messages": [{"role": "user", "content": "x"}], "chat_template": "{{ x }}"},
            "chat_template",
        ),
        ("/v1/embeddings", {"input": "x", "mm_processor_kwargs": {"a": 1}}, "mm_processor_kwargs"),
        ("/v1/embeddings", {"input": "x", "encoding_format": "bytes"}, "encoding_format"),
        (
            "/v1/embeddings",
            {"input": "x", "messages": [{"role": "user", "content": "x"}]},
            "messages",
        ),
        ("/v1/embeddings", {"messages": [{"role": "user", "content": "x"}]}, "messages"),
        ("/invocations", {"prompt": "x"}, "input"),
        ("/detokenize", {"tokens": [10**9]}, "tokens"),
        ("/tokenize", {"prompt": "x", "input": "x"}, "input"),
    ],
)
def test_bad_vllm_fields_are_400_naming_the_field(server, path, body, param):
    response = _post(server, path, body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("chat") / "decoder"
    save_tiny_decoder("qwen3", path, seed=51)
    config_path = path / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.update(chat_template=TEMPLATE, eos_token="[SEP]")
    config_path.write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module")
def chat_server(chat_model):
    proc = ServerProcess("--model", str(chat_model), "--dtype", "float32", "--no-warmup")
    yield proc
    assert proc.stop() == 0, proc.log()


def test_messages_are_rendered_by_the_chat_template(chat_server, chat_model):
    reference = Embedder.from_pretrained(chat_model, dtype="float32", compile_cache_dir=False)
    messages = [
        {"role": "system", "content": "Represent the question for retrieval."},
        {"role": "user", "content": [{"type": "text", "text": "Where do penguins live?"}]},
    ]
    rendered = (
        "<|system|>Represent the question for retrieval.[SEP]<|user|>Where do penguins live?[SEP]"
    )
    got = _post(chat_server, "/v1/embeddings", {"messages": messages})
    ids = reference.tokenize([rendered], add_special_tokens=False)  # vLLM: the template has them
    np.testing.assert_allclose(_vector(got), reference.embed([ids[0].tolist()])[0], atol=1e-6)
    assert got.json()["usage"]["prompt_tokens"] == len(ids[0])
    prompt = _post(
        chat_server, "/v1/embeddings", {"messages": messages, "add_generation_prompt": True}
    )
    ids = reference.tokenize([rendered + "<|assistant|>"], add_special_tokens=False)
    np.testing.assert_allclose(_vector(prompt), reference.embed([ids[0].tolist()])[0], atol=1e-6)
    both = _post(chat_server, "/v1/embeddings", {
        "messages": messages, "add_generation_prompt": True, "continue_final_message": True})  # fmt: skip
    assert both.status_code == 400 and both.json()["error"]["param"] == "continue_final_message"
    tokens = _post(chat_server, "/tokenize", {"messages": messages}).json()
    assert tokens["count"] == len(reference.tokenize([rendered], add_special_tokens=False)[0])
    invoked = _post(chat_server, "/invocations", {"messages": messages})
    np.testing.assert_allclose(_vector(invoked), _vector(got), atol=1e-7)


CONVERSATION_TEMPLATE = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"


@pytest.fixture(scope="module")
def templated_server(tmp_path_factory):
    """vLLM's conversation-embedding test shape: a model without a chat template (MiniLM),
    served with --chat-template FILE; request templates trusted."""
    template = tmp_path_factory.mktemp("template") / "conversation.jinja"
    template.write_text(CONVERSATION_TEMPLATE)
    proc = ServerProcess(
        "--chat-template", str(template), "--trust-request-chat-template",
        "--seq-lengths", "16,32,64", "--no-warmup",
    )  # fmt: skip
    yield proc
    assert proc.stop() == 0, proc.log()


def _as_ids(server, text: str) -> np.ndarray:
    """The vector of `text` embedded as it is (no special tokens), not through any template."""
    ids = _post(server, "/tokenize", {"prompt": text, "add_special_tokens": False}).json()
    return _vector(_post(server, "/v1/embeddings", {"input": [ids["tokens"]]}))


def test_chat_template_option_and_request_templates(templated_server):
    messages = [
        {"role": "system", "content": "Represent the question."},
        {"role": "user", "content": "Where do penguins live?"},
    ]
    rendered = "system: Represent the question.\nuser: Where do penguins live?\n"
    got = _post(templated_server, "/v1/embeddings", {"messages": messages})
    assert got.status_code == 200, got.text
    np.testing.assert_allclose(_vector(got), _as_ids(templated_server, rendered), atol=1e-6)
    own = "{{ prefix }}{% for m in messages %}[{{ m.content }}]{% endfor %}"
    body = {"messages": messages, "chat_template": own, "chat_template_kwargs": {"prefix": "Q "}}
    got = _post(templated_server, "/v1/embeddings", body)
    want = "Q [Represent the question.][Where do penguins live?]"
    np.testing.assert_allclose(_vector(got), _as_ids(templated_server, want), atol=1e-6)
    tokens = _post(templated_server, "/tokenize", {"messages": messages, "chat_template": own})
    assert tokens.json()["count"] > 0
    for bad, param in [
        ({**body, "chat_template": "{% for %}"}, "chat_template"),
        ({**body, "chat_template_kwargs": {"messages": []}}, "chat_template_kwargs"),
    ]:
        response = _post(templated_server, "/v1/embeddings", bad)
        assert response.status_code == 400 and response.json()["error"]["param"] == param


def test_a_chat_template_that_is_not_jinja_stops_start_up():
    import subprocess
    import sys

    run = subprocess.run(
        [sys.executable, "-m", "jaxembed.cli", "serve", "--chat-template", "{% for %}"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 2 and "not valid Jinja" in run.stderr
