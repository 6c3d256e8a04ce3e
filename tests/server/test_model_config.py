"""`--model [NAME=]SPEC` (repeatable) and `--config FILE` → the models a server serves."""

from __future__ import annotations

import argparse
import json

import pytest

from jaxembed_server.config import add_serve_arguments, config_from_args
from jaxembed_server.model_config import ModelConfigError, parse_devices, split_model_arg


def _config(*argv: str):
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return config_from_args(parser.parse_args(list(argv)))


def test_one_plain_model_keeps_todays_behaviour():
    (model,) = _config("--model", "bge-small-en-v1.5", "--served-model-name", "x").models
    assert (model.name, model.spec, model.served_model_names) == (None, "bge-small-en-v1.5", ("x",))
    assert model.names(["card-name"]) == ("x",)
    (default,) = _config().models
    assert default.spec is None and default.names(["a", "b"]) == ("a", "b")


def test_repeated_model_flags_name_each_model_and_inherit_server_flags():
    config = _config(
        "--model", "small=bge-small-en-v1.5", "--model", "/models/qwen", "--dtype", "bfloat16",
        "--max-queued-requests", "7",
    )  # fmt: skip
    small, qwen = config.models
    assert (small.name, small.spec, qwen.name, qwen.spec) == (
        "small",
        "bge-small-en-v1.5",
        None,
        "/models/qwen",
    )
    assert small.dtype == qwen.dtype == "bfloat16"
    assert small.max_queued_requests == 7
    assert small.names(["bge-small"]) == ("small",)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "a=x", "--model", "b=y", "--served-model-name", "z"], "single --model"),
        (["--model", "a=x", "--model", "b=y", "--lora-root", "/tmp"], "LoRA per model"),
        (["--model", "a=x", "--config", "f.yaml"], "not both"),
    ],
)
def test_ambiguous_flags_are_refused(argv, message):
    with pytest.raises(ValueError, match=message):
        _config(*argv)


def test_config_file_yaml_and_json(tmp_path):
    yaml_file = tmp_path / "models.yaml"
    yaml_file.write_text(
        "models:\n"
        "  - name: a\n    model: all-MiniLM-L6-v2\n    served_model_names: [x, y]\n"
        "    lora: {support: /adapters/support}\n    devices: 0-1\n"
        "  - model: /m/qwen\n    dtype: bfloat16\n    batch_sizes: [1, 2]\n    mesh: model=2\n"
    )
    a, qwen = _config("--config", str(yaml_file), "--token-budget", "128").models
    assert a.names(["card"]) == ("a", "x", "y")
    assert a.lora == (("support", "/adapters/support"),) and a.lora_enabled
    assert a.devices == (0, 1) and a.token_budget == 128
    assert qwen.dtype == "bfloat16" and qwen.batch_sizes == (1, 2) and qwen.mesh.model == 2
    json_file = tmp_path / "models.json"
    json_file.write_text(json.dumps({"models": [{"model": "x", "max_queued_requests": 3}]}))
    (only,) = _config("--config", str(json_file)).models
    assert only.max_queued_requests == 3


def test_chat_templates_per_model_and_server_wide(tmp_path):
    """--chat-template (a file or the template) for every model; `chat_template:` per model
    in --config overrides it; the config holds the template's text."""
    template = tmp_path / "chat.jinja"
    template.write_text("{% for m in messages %}{{ m.content }}{% endfor %}")
    path = tmp_path / "models.yaml"
    path.write_text(
        "models:\n  - model: a\n  - model: b\n    chat_template: '{{ messages[0].content }}'\n"
    )
    a, b = _config("--config", str(path), "--chat-template", str(template)).models
    assert a.chat_template == template.read_text()
    assert b.chat_template == "{{ messages[0].content }}"
    assert _config("--chat-template", "{{ x }}").models[0].chat_template == "{{ x }}"


@pytest.mark.parametrize(
    "text, message",
    [
        ("models: []\n", "non-empty list"),
        ("other: 1\n", "one key"),
        ("models:\n  - name: a\n", "needs `model:`"),
        ("models:\n  - model: x\n    dtyp: float32\n", "unknown option"),
        ("models:\n  - model: x\n    devices: 3-1\n", "empty, negative"),
        ("models:\n  - model: x\n    lora: [a]\n", "maps adapter names"),
        ("models: [\n", "cannot read"),
        ("models:\n  - model: x\n    chat_template: '{% for %}'\n", "not valid Jinja"),
    ],
)
def test_bad_config_files_say_what_is_wrong(tmp_path, text, message):
    path = tmp_path / "models.yaml"
    path.write_text(text)
    with pytest.raises(ModelConfigError, match=message):
        _config("--config", str(path))


def test_devices_and_model_args():
    assert parse_devices("0-3") == (0, 1, 2, 3)
    assert parse_devices("0,2, 4") == (0, 2, 4)
    assert parse_devices([1, 0]) == (1, 0) and parse_devices(2) == (2,)
    for bad in ("a", "1,1", True, 1.5):
        with pytest.raises(ModelConfigError):
            parse_devices(bad)
    assert split_model_arg("big=BAAI/bge-large") == ("big", "BAAI/bge-large")
    assert split_model_arg("/path/with=sign") == (None, "/path/with=sign")
    assert split_model_arg("all-MiniLM-L6-v2") == (None, "all-MiniLM-L6-v2")
