"""Bad checkpoints fail with a specific exception and a message that names the problem."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from jaxembed.errors import ModelLoadError, UnsupportedArchitectureError, WeightMismatchError
from jaxembed.weights.loader import load_model
from tests.helpers import save_tiny_model


@pytest.fixture
def tiny_dir(tmp_path):
    save_tiny_model("bert", tmp_path, seed=7)
    return tmp_path


def _edit_config(model_dir, **changes):
    path = model_dir / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def test_unknown_architecture(tiny_dir):
    _edit_config(tiny_dir, model_type="gpt2")
    with pytest.raises(UnsupportedArchitectureError, match="'gpt2' is not supported"):
        load_model(tiny_dir)


def test_relative_position_embeddings_are_refused(tiny_dir):
    _edit_config(tiny_dir, position_embedding_type="relative_key")
    with pytest.raises(UnsupportedArchitectureError, match="relative_key"):
        load_model(tiny_dir)


def test_missing_config(tiny_dir):
    (tiny_dir / "config.json").unlink()
    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        load_model(tiny_dir)


def test_missing_weights_and_pickle_refused(tiny_dir):
    (tiny_dir / "model.safetensors").rename(tiny_dir / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="pickle checkpoints are not loaded"):
        load_model(tiny_dir)


def test_missing_tokenizer(tiny_dir):
    (tiny_dir / "tokenizer.json").unlink()
    with pytest.raises(ModelLoadError, match=r"tokenizer\.json"):
        load_model(tiny_dir)


def test_wrong_shapes_are_listed(tiny_dir):
    _edit_config(tiny_dir, intermediate_size=128)
    with pytest.raises(
        WeightMismatchError,
        match=r"shape mismatches \(6\).*intermediate\.dense\.weight: checkpoint has \[64, 32\], model expects \[128, 32\]",
    ):
        load_model(tiny_dir)


def test_missing_and_unexpected_tensors_are_named(tiny_dir):
    path = tiny_dir / "model.safetensors"
    tensors = load_file(path)
    del tensors["encoder.layer.1.attention.self.key.weight"]
    tensors["encoder.layer.0.surprise.weight"] = np.zeros(3, np.float32)
    save_file(tensors, path)
    with pytest.raises(WeightMismatchError) as info:
        load_model(tiny_dir)
    message = str(info.value)
    assert "missing tensors (1): encoder.layer.1.attention.self.key.weight" in message
    assert "unexpected tensors (1): encoder.layer.0.surprise.weight" in message


def test_corrupt_safetensors(tiny_dir):
    (tiny_dir / "model.safetensors").write_bytes(
        b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!"
    )
    with pytest.raises(ModelLoadError, match="not a readable safetensors file"):
        load_model(tiny_dir)


def test_unknown_model_spec():
    with pytest.raises(ModelLoadError, match="neither a model directory nor a known card"):
        load_model("no-such-model-anywhere")


def test_card_without_weights_says_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXEMBED_CHECKPOINTS_DIR", str(tmp_path))
    with pytest.raises(
        ModelLoadError, match=re.escape("jaxembed convert <its directory> --card bge-base-en-v1.5")
    ):
        load_model("BAAI/bge-base-en-v1.5")
