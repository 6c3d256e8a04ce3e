"""Architecture families: the single table from HF `model_type` to module, config and weight map.

Adding an architecture means adding one `Family` here; the loader, the
converter and the engine read everything they need from it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxembed.errors import UnsupportedArchitectureError
from jaxembed.models.clip import CLIP_FAMILIES, ClipConfig, ClipModel
from jaxembed.models.decoder import DECODER_FAMILIES, Decoder, DecoderConfig
from jaxembed.models.encoder import ENCODER_FAMILIES, Encoder, EncoderConfig
from jaxembed.parallel.sharding import logical_axes
from jaxembed.weights import maps


@dataclasses.dataclass(frozen=True)
class Family:
    config_from_hf: Callable[[Mapping[str, Any]], Any]
    module: Callable[..., nn.Module]  # (config, dtype=, param_dtype=) -> module
    rules: Callable[[Any], Sequence[maps.ParamRule]]
    ignored_prefixes: tuple[str, ...]
    wrapper_prefixes: tuple[str, ...]
    # The module takes packed rows (`packed=True`: segment ids in the mask argument).
    packable: bool = False

    def _abstract_boxed(self, config: Any, param_dtype: jnp.dtype) -> Any:
        module = self.module(config, param_dtype=param_dtype)
        ids = jax.ShapeDtypeStruct((1, 2), jnp.int32)
        return jax.eval_shape(module.init, jax.random.key(0), ids, ids)["params"]

    def abstract_params(self, config: Any, param_dtype: jnp.dtype) -> Any:
        """Shapes and dtypes of the parameter tree, computed without allocating it."""
        return nn.meta.unbox(self._abstract_boxed(config, param_dtype))

    def param_axes(self, config: Any) -> Any:
        """The logical axis names of every parameter (same tree as `abstract_params`)."""
        return logical_axes(self._abstract_boxed(config, jnp.float32))


_ENCODER = Family(
    config_from_hf=EncoderConfig.from_hf,
    module=Encoder,
    rules=maps.encoder_rules,
    ignored_prefixes=maps.ENCODER_IGNORED_PREFIXES,
    wrapper_prefixes=maps.ENCODER_WRAPPER_PREFIXES,
    packable=True,
)

_DECODER = Family(
    config_from_hf=DecoderConfig.from_hf,
    module=Decoder,
    rules=maps.decoder_rules,
    ignored_prefixes=maps.DECODER_IGNORED_PREFIXES,
    wrapper_prefixes=maps.DECODER_WRAPPER_PREFIXES,
    packable=True,
)

_CLIP = Family(
    config_from_hf=ClipConfig.from_hf,
    module=ClipModel,
    rules=maps.clip_rules,
    ignored_prefixes=maps.CLIP_IGNORED_PREFIXES,
    wrapper_prefixes=maps.CLIP_WRAPPER_PREFIXES,
)

FAMILIES: dict[str, Family] = (
    dict.fromkeys(ENCODER_FAMILIES, _ENCODER)
    | dict.fromkeys(DECODER_FAMILIES, _DECODER)
    | dict.fromkeys(CLIP_FAMILIES, _CLIP)
)


def get_family(model_type: str) -> Family:
    try:
        return FAMILIES[model_type]
    except KeyError:
        raise UnsupportedArchitectureError(
            f"architecture {model_type!r} is not supported; supported: {sorted(FAMILIES)}"
        ) from None
