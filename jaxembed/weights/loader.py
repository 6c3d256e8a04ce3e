"""Load a model (card, architecture config, parameters on device) from any supported directory.

Two paths: a Hugging Face directory is read from safetensors through the
family's name map; a directory written by `jaxembed convert` is restored from
Orbax straight into the target sharding. Both give identical parameters.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxembed.card import CARD_FILENAME, ModelCard
from jaxembed.errors import ModelLoadError
from jaxembed.families import Family, get_family
from jaxembed.registry import read_hf_config, resolve_model
from jaxembed.weights.convert_params import Progress, assemble_params
from jaxembed.weights.orbax_io import abstract_with_sharding, restore_params
from jaxembed.weights.safetensors_io import SafetensorsCheckpoint

PARAMS_DIRNAME = "params"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "sentencepiece.bpe.model",
)


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    card: ModelCard
    hf_config: dict[str, Any]
    config: Any
    family: Family
    params: Any
    model_dir: Path
    dtype: jnp.dtype
    source_format: str  # "safetensors" | "orbax"
    load_seconds: float

    def module(self) -> nn.Module:
        return self.family.module(self.config, dtype=self.dtype, param_dtype=self.dtype)


def read_safetensors_params(
    model_dir: Path,
    family: Family,
    config: Any,
    dtype: jnp.dtype,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """The parameter tree as host numpy arrays of `dtype`, converted tensor by tensor."""
    abstract = family.abstract_params(config, dtype)
    checkpoint = SafetensorsCheckpoint(model_dir)
    try:
        return assemble_params(
            checkpoint,
            family.rules(config),
            abstract,
            num_layers=config.num_layers,
            dtype=np.dtype(dtype),
            ignored_prefixes=family.ignored_prefixes,
            wrapper_prefixes=family.wrapper_prefixes,
            progress=progress,
        )
    finally:
        checkpoint.close()


def load_model(
    spec: str | os.PathLike | None = None,
    *,
    dtype: str | None = None,
    sharding: jax.sharding.Sharding | None = None,
    progress: Progress | None = None,
) -> LoadedModel:
    """Load `spec` (a directory or a card name; None = the embedded default model)."""
    start = time.perf_counter()
    model_dir, card = resolve_model(spec)
    hf_config = read_hf_config(model_dir)
    family = get_family(str(hf_config.get("model_type")))
    config = family.config_from_hf(hf_config)
    if (
        getattr(config, "causal", card.causal) != card.causal
    ):  # the card decides (gte-Qwen2: bidirectional)
        config = dataclasses.replace(config, causal=card.causal)
    jdtype = jnp.dtype(dtype or card.dtype)
    if not (model_dir / "tokenizer.json").is_file():
        raise ModelLoadError(f"{model_dir} has no tokenizer.json (a fast tokenizer is required)")

    orbax_dir = model_dir / PARAMS_DIRNAME
    if orbax_dir.is_dir() and not (model_dir / CARD_FILENAME).is_file():
        raise ModelLoadError(
            f"{model_dir} holds an incomplete conversion (no {CARD_FILENAME}); run `jaxembed convert` again"
        )
    if orbax_dir.is_dir():
        abstract = abstract_with_sharding(family.abstract_params(config, jdtype), sharding)
        params = restore_params(orbax_dir, abstract)
        source_format = "orbax"
    else:
        host = read_safetensors_params(model_dir, family, config, jdtype, progress)
        target = sharding or jax.local_devices()[0]
        params = jax.device_put(host, target)
        source_format = "safetensors"
    jax.block_until_ready(params)
    return LoadedModel(
        card=card,
        hf_config=hf_config,
        config=config,
        family=family,
        params=params,
        model_dir=model_dir,
        dtype=jdtype,
        source_format=source_format,
        load_seconds=time.perf_counter() - start,
    )
