"""SPLADE sparse embeddings: a masked-LM head over every token, then `log(1 + relu(logits))`
pooled over the sequence (max, or sum), one weight per vocabulary entry.

`SparseEncoder` wraps a BERT-family backbone (`BertForMaskedLM`, `DistilBertForMaskedLM`)
with its MLM head: `transform` (dense → activation → LayerNorm) and the decoder, which is
the word-embedding table (tied, as in every SPLADE checkpoint) plus a bias.

The head's logits are [tokens, vocab]: 30k floats per token, 2 GB for a 32 x 512 batch.
`sparse_pool` never builds them for the whole batch: it scans the sequence in chunks of
`chunk_tokens(batch, length, vocab)` positions, keeping a running [batch, vocab] maximum
(or sum), so the head's working set stays under `SPARSE_HEAD_ELEMENTS` floats per step
whatever the bucket; the compiled program's memory (engine/memory.py, `jaxembed plan`)
includes it. The head runs in float32 whatever the backbone's dtype.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from jaxembed.errors import UnsupportedArchitectureError
from jaxembed.models.encoder import ACTIVATIONS
from jaxembed.models.heads import BackboneWithHead
from jaxembed.models.partitioning import ZEROS, dense, layer_norm, with_axes

# Most [tokens, vocab] logits one step of the head holds (float32: 128 MiB).
SPARSE_HEAD_ELEMENTS = 2**25
SPLADE_STRATEGIES = ("max", "sum")
SPLADE_ACTIVATIONS = ("relu", "log1p_relu")


@dataclasses.dataclass(frozen=True)
class SparseConfig:
    """A backbone's config plus its MLM head and SPLADE pooling; reads through to the
    backbone for everything else (layers, vocabulary, pad id)."""

    backbone: Any
    transform_activation: str
    head_norm_eps: float
    strategy: str = "max"  # SpladePooling's pooling_strategy
    activation: str = "relu"  # "log1p_relu": log1p applied twice (OpenSearch's models)

    def __post_init__(self) -> None:
        if self.strategy not in SPLADE_STRATEGIES or self.activation not in SPLADE_ACTIVATIONS:
            raise UnsupportedArchitectureError(
                f"SPLADE pooling {self.strategy}/{self.activation} is not one of "
                f"{SPLADE_STRATEGIES} x {SPLADE_ACTIVATIONS}"
            )
        if self.transform_activation not in ACTIVATIONS:
            raise UnsupportedArchitectureError(
                f"MLM head activation {self.transform_activation!r} is not supported"
            )

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.backbone, name)


def chunk_tokens(batch: int, length: int, vocab: int) -> int:
    """The most positions per head step, a divisor of `length`, keeping batch x chunk x vocab
    within SPARSE_HEAD_ELEMENTS (one position at a time at least)."""
    most = max(1, SPARSE_HEAD_ELEMENTS // max(1, batch * vocab))
    return max(c for c in range(1, min(length, most) + 1) if length % c == 0)


class SparseEncoder(BackboneWithHead):
    """`__call__`: the backbone's hidden states; `sparse_pool`: hidden states → [B, vocab]."""

    config: SparseConfig

    def setup(self) -> None:
        super().setup()
        cfg = self.config
        f32 = {"dtype": jnp.float32, "param_dtype": self.param_dtype}
        self.transform = dense(cfg.hidden_size, ("embed", "embed_out"), "transform", **f32)
        self.norm = layer_norm(cfg.head_norm_eps, "norm", **f32)
        self.decoder_bias = self.param(
            "decoder_bias", with_axes(ZEROS, ("vocab",)), (cfg.vocab_size,), self.param_dtype
        )

    def _init_head(self) -> None:
        self.norm(self.transform(jnp.zeros((1, self.config.hidden_size), jnp.float32)))

    def sparse_pool(self, hidden_bld: jax.Array, mask_bl: jax.Array) -> jax.Array:
        """Pool every real token's weights → [B, vocab] float32, chunk by chunk (see module doc)."""
        cfg = self.config
        params = self.variables["params"]
        head = _MlmHead(
            params["transform"],
            params["norm"],
            params["backbone"]["embeddings"]["word"]["embedding"],
            params["decoder_bias"],
            cfg,
        )
        batch, length, width = hidden_bld.shape
        chunk = chunk_tokens(batch, length, cfg.vocab_size)
        steps = length // chunk
        hidden_sbcd = hidden_bld.reshape(batch, steps, chunk, width).swapaxes(0, 1)
        real_sbc = mask_bl.reshape(batch, steps, chunk).swapaxes(0, 1) > 0
        reduce, combine = (jnp.max, jnp.maximum) if cfg.strategy == "max" else (jnp.sum, jnp.add)

        def step(pooled_bv, chunk_inputs):
            hidden_bcd, real_bc = chunk_inputs
            weights = jnp.where(real_bc[..., None], head.token_weights(hidden_bcd), 0.0)
            return combine(pooled_bv, reduce(weights, axis=1)), None

        start = jnp.zeros((batch, cfg.vocab_size), jnp.float32)
        pooled, _ = jax.lax.scan(step, start, (hidden_sbcd, real_sbc))
        return pooled


@dataclasses.dataclass(frozen=True)
class _MlmHead:
    """The MLM head as a pure function of its parameters (what `jax.lax.scan` steps over)."""

    transform: Any  # {"kernel" [D, D], "bias" [D]}
    norm: Any  # {"scale" [D], "bias" [D]}
    table_vd: jax.Array  # the tied decoder: the word embeddings
    bias_v: jax.Array
    config: SparseConfig

    def token_weights(self, hidden_bcd: jax.Array) -> jax.Array:
        """[B, C, D] hidden states → [B, C, vocab] SPLADE weights (before masking)."""
        cfg = self.config
        h = hidden_bcd.astype(jnp.float32) @ self.transform["kernel"].astype(jnp.float32)
        h = ACTIVATIONS[cfg.transform_activation](h + self.transform["bias"].astype(jnp.float32))
        mean = jnp.mean(h, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(h - mean), axis=-1, keepdims=True)
        h = (h - mean) * jax.lax.rsqrt(var + cfg.head_norm_eps)
        h = h * self.norm["scale"].astype(jnp.float32) + self.norm["bias"].astype(jnp.float32)
        logits = h @ self.table_vd.astype(jnp.float32).T + self.bias_v.astype(jnp.float32)
        weights = jnp.log1p(jax.nn.relu(logits))
        return jnp.log1p(weights) if cfg.activation == "log1p_relu" else weights
