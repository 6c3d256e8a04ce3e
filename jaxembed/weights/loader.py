"""Load a model (card, architecture config, parameters on device) from any supported directory.

Two paths: a Hugging Face directory is read from safetensors through the
family's name map; a directory written by `jaxembed convert` is restored from
Orbax straight into the target shardings. Both give identical parameters,
placed on the mesh as the logical-axis rules say (jaxembed/parallel/sharding.py):
every device receives only its own shard, never a full copy first.
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
from jax.sharding import Mesh

from jaxembed.card import CARD_FILENAME, DTYPES, ModelCard
from jaxembed.errors import ModelLoadError
from jaxembed.families import Family, model_family, module_dirs
from jaxembed.models.attention import AttentionConfig
from jaxembed.models.gemma3 import GEMMA3_FAMILIES
from jaxembed.parallel.mesh import make_mesh
from jaxembed.parallel.sharding import param_shardings
from jaxembed.registry import resolve_model_config
from jaxembed.weights.convert_params import Progress, assemble_params
from jaxembed.weights.orbax_io import abstract_with_sharding, restore_params
from jaxembed.weights.safetensors_io import SafetensorsCheckpoint

PARAMS_DIRNAME = "params"
# Files a converted model keeps from its source: the tokenizer and the image processor.
COMPANION_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "sentencepiece.bpe.model",
    "preprocessor_config.json",
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
    mesh: Mesh
    attention: AttentionConfig = dataclasses.field(default_factory=AttentionConfig)

    def module(self) -> nn.Module:
        return self.family.module(
            self.config, dtype=self.dtype, param_dtype=self.dtype, attention=self.attention
        )

    def with_attention(self, attention: AttentionConfig) -> LoadedModel:
        """The same parameters run by another attention implementation."""
        return dataclasses.replace(self, attention=attention)


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
    for path in module_dirs(config):
        checkpoint.add_module(model_dir / path, f"{path}/")
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


def _place(host: Any, shardings: Any) -> Any:
    """Host arrays → global arrays; each device's shard is cut from the host copy directly.

    `make_array_from_callback` also works when the mesh spans several processes
    (each process fills only its own devices), where `device_put` would not.
    """
    return jax.tree.map(
        lambda array, sharding: jax.make_array_from_callback(
            array.shape, sharding, lambda index: array[index]
        ),
        host,
        shardings,
    )


def load_model(
    spec: str | os.PathLike | None = None,
    *,
    dtype: str | None = None,
    mesh: Mesh | None = None,
    progress: Progress | None = None,
    route: str | None = None,
) -> LoadedModel:
    """Load `spec` (a directory or a card name; None = the embedded default model).

    `mesh`: where the parameters go (default: a 1x1 mesh on the first local device).
    `route`: which route of a sentence-transformers Router model (jaxembed/routes.py).
    """
    start = time.perf_counter()
    model_dir, card, hf_config = resolve_model_config(spec, route)
    family, config = model_family(hf_config, card, model_dir)
    jdtype = jnp.dtype(dtype or card.dtype)
    if jdtype.name not in DTYPES:
        hint = (
            ": Gemma3's activations overflow float16 (NaN); use bfloat16 or float32"
            if card.family in GEMMA3_FAMILIES
            else ""
        )
        raise ModelLoadError(f"dtype {jdtype.name!r} is not one of {DTYPES}{hint}")
    if not (model_dir / "tokenizer.json").is_file():
        raise ModelLoadError(
            f"{model_dir} has no tokenizer.json (a fast tokenizer is required; "
            "`jaxembed convert` writes one from slow tokenizer files)"
        )

    orbax_dir = model_dir / PARAMS_DIRNAME
    if orbax_dir.is_dir() and not (model_dir / CARD_FILENAME).is_file():
        raise ModelLoadError(
            f"{model_dir} holds an incomplete conversion (no {CARD_FILENAME}); run `jaxembed convert` again"
        )
    mesh = mesh or make_mesh(devices=jax.local_devices()[:1])
    abstract = family.abstract_params(config, jdtype)
    shardings = param_shardings(abstract, family.param_axes(config), mesh)
    if orbax_dir.is_dir():
        params = restore_params(orbax_dir, abstract_with_sharding(abstract, shardings))
        source_format = "orbax"
    else:
        host = read_safetensors_params(model_dir, family, config, jdtype, progress)
        params = _place(host, shardings)
        del host
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
        mesh=mesh,
    )
