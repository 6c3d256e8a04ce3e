"""Static embedding models (sentence-transformers' `StaticEmbedding`, model2vec's tables): one
trained vector per token, and a text's embedding is the mean of its tokens' vectors.

There is no attention and no position: the "hidden state" of a token is its row of the
table, so the runner's mean pooling over the mask gives exactly torch's `EmbeddingBag`
(mode "mean") that sentence-transformers runs, and packed rows need nothing special. The
work per text is a gather and a sum — the host's tokenizer is the limit, not the device.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxembed.errors import UnsupportedArchitectureError
from jaxembed.model_types import SPARSE_STATIC_FAMILY, STATIC_FAMILIES
from jaxembed.models.partitioning import with_axes
from jaxembed.parallel.sharding import constrain


@dataclasses.dataclass(frozen=True)
class StaticConfig:
    vocab_size: int
    hidden_size: int
    pad_token_id: int = 0
    # No layers: the loader's per-layer rules and the memory plan read this.
    num_layers: int = 0

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any]) -> StaticConfig:
        if hf.get("model_type") not in STATIC_FAMILIES:
            raise UnsupportedArchitectureError(
                f"model_type {hf.get('model_type')!r} is not a static embedding"
            )
        return cls(
            vocab_size=int(hf["vocab_size"]),
            hidden_size=int(hf["hidden_size"]),
            pad_token_id=int(hf.get("pad_token_id", 0) or 0),
        )


class StaticEmbedding(nn.Module):
    """token ids [B, L] → each token's table row [B, L, D]; the mask only matters to pooling.

    The signature is every text family's (mask or segment ids, LoRA stacks, `packed`) so
    the runner treats it as one; adapters do not apply (a table has no projections).
    """

    config: StaticConfig
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    attention: Any = None  # no attention; accepted so the loader builds every family alike

    @nn.compact
    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array,
        lora=None,
        adapter_ids=None,
        packed: bool = False,
    ) -> jax.Array:
        del attention_mask, lora, adapter_ids, packed
        table = nn.Embed(
            self.config.vocab_size,
            self.config.hidden_size,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            embedding_init=with_axes(nn.linear.default_embed_init, ("vocab", "embed")),
            name="embedding",
        )
        return constrain(table(input_ids), ("batch", "length", "embed"))


@dataclasses.dataclass(frozen=True)
class SparseStaticConfig:
    vocab_size: int
    pad_token_id: int = 0
    num_layers: int = 0

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any]) -> SparseStaticConfig:
        if hf.get("model_type") != SPARSE_STATIC_FAMILY:
            raise UnsupportedArchitectureError(
                f"model_type {hf.get('model_type')!r} is not a sparse static embedding"
            )
        return cls(vocab_size=int(hf["vocab_size"]), pad_token_id=int(hf.get("pad_token_id", 0)))


class SparseStatic(nn.Module):
    """token ids [B, L] + mask [B, L] → [B, V]: the trained weight of every vocabulary entry
    present among a row's real tokens, zero elsewhere (sentence-transformers'
    SparseStaticEmbedding: a token counts once however often it occurs). It pools itself:
    the runner takes its output as the row's vector."""

    config: SparseStaticConfig
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    attention: Any = None

    @nn.compact
    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array,
        lora=None,
        adapter_ids=None,
        packed: bool = False,
    ) -> jax.Array:
        del lora, adapter_ids, packed
        vocab = self.config.vocab_size
        weight = self.param(
            "weight", with_axes(nn.initializers.ones_init(), ("vocab",)), (vocab,), jnp.float32
        )
        rows = jnp.arange(input_ids.shape[0])[:, None]
        real = (attention_mask > 0).astype(jnp.float32)
        present = jnp.zeros((input_ids.shape[0], vocab), jnp.float32).at[rows, input_ids].max(real)
        return present * weight
