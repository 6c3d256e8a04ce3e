"""Where sentence-transformers keeps a `StaticEmbedding` model's files, and the architecture
config jaxembed describes it by (it saves no `config.json`).

Two layouts: 4.x+ saves the input module at the root (`model.safetensors` with one tensor,
`embedding.weight`, beside `tokenizer.json` and `modules.json`); 3.x saved it under
`0_StaticEmbedding/`. model2vec's own files name the table `embeddings`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jaxembed.errors import ModelLoadError

STATIC_MODEL_TYPE = "static_embedding"
SPARSE_STATIC_MODEL_TYPE = "sparse_static"
TABLE_KEYS = ("embedding.weight", "embeddings")
# sentence-transformers embeds a whole text with a static model (its max_seq_length is
# infinite) unless the saved tokenizer truncates; jaxembed needs a largest bucket, so texts
# beyond this many tokens are refused, or cut with `truncate`, or chunked.
STATIC_MAX_LENGTH = 8192


def _modules(model_dir: Path) -> list[dict[str, Any]]:
    path = model_dir / "modules.json"
    if not path.is_file():
        return []
    try:
        modules = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"{path} is not valid JSON: {e}") from None
    return [m for m in modules if isinstance(m, dict)] if isinstance(modules, list) else []


def is_static_module(module_type: str) -> bool:
    """sentence-transformers' dense StaticEmbedding (not SparseStaticEmbedding)."""
    return module_type.rsplit(".", 1)[-1] == "StaticEmbedding"


def static_module_dir(model_dir: Path) -> Path | None:
    """The directory holding a static model's table and tokenizer, or None if `model_dir`
    is not a static model: the first module of `modules.json` when it is a StaticEmbedding,
    or `model_dir` itself when it has no `config.json` but a table (a module directory)."""
    modules = _modules(model_dir)
    if modules:
        first = modules[0]
        if not is_static_module(str(first.get("type", ""))):
            return None
        return model_dir / str(first.get("path", ""))
    if (model_dir / "config.json").is_file():
        return None
    return model_dir if _table_shape(model_dir) is not None else None


def _tensor_shape(weights_dir: Path, keys: tuple[str, ...]) -> tuple[int, ...] | None:
    """The shape of the first of `keys` in `weights_dir/model.safetensors` (header only)."""
    path = weights_dir / "model.safetensors"
    if not path.is_file():
        return None
    from jaxembed.weights.safetensors_io import SafetensorsFile  # numpy only, no JAX

    tensors = SafetensorsFile(path)
    try:
        names = set(tensors.keys())
        key = next((k for k in keys if k in names), None)
        return tensors.shape(key) if key else None
    finally:
        tensors.close()


def _table_shape(weights_dir: Path) -> tuple[int, int] | None:
    shape = _tensor_shape(weights_dir, TABLE_KEYS)
    return (int(shape[0]), int(shape[1])) if shape is not None and len(shape) == 2 else None


def static_hf_config(weights_dir: Path) -> dict[str, Any]:
    """The architecture config of a static model: its table's shape, read from the header."""
    shape = _table_shape(weights_dir)
    if shape is None:
        raise ModelLoadError(
            f"{weights_dir} holds no static embedding table (model.safetensors with "
            f"{' or '.join(TABLE_KEYS)})"
        )
    vocab, width = shape
    return {"model_type": STATIC_MODEL_TYPE, "vocab_size": vocab, "hidden_size": width}


def static_max_length(weights_dir: Path) -> int:
    """Most tokens of one text: the saved tokenizer's own truncation (sentence-transformers
    leaves it on), else STATIC_MAX_LENGTH."""
    try:
        saved = json.loads((weights_dir / "tokenizer.json").read_text()).get("truncation")
    except (OSError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"{weights_dir}/tokenizer.json is not readable: {e}") from None
    limit = saved.get("max_length") if isinstance(saved, dict) else None
    return int(limit) if isinstance(limit, int) and limit >= 2 else STATIC_MAX_LENGTH


def sparse_static_hf_config(weights_dir: Path) -> dict[str, Any]:
    """The architecture config of a SparseStaticEmbedding folder (its own `config.json` holds
    only training flags): the vocabulary size of its `weight`."""
    shape = _tensor_shape(weights_dir, ("weight",))
    if shape is None or len(shape) != 1:
        raise ModelLoadError(
            f"{weights_dir}: expected model.safetensors with one tensor `weight` of "
            "[vocabulary] weights"
        )
    return {"model_type": SPARSE_STATIC_MODEL_TYPE, "vocab_size": int(shape[0])}
