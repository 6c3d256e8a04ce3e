"""Flax BERT-style encoders: BERT, RoBERTa, XLM-RoBERTa (and CamemBERT, the same graph).

One module covers the family; the differences are data in `EncoderConfig`:
RoBERTa-style models number positions from `pad_token_id + 1` and count them
only over non-pad tokens, and some have no token-type table.

Layers are stacked with `nn.scan`, so a 24-layer model compiles one layer body
(compile time grows with buckets, not with depth) and every layer parameter
carries a leading `layers` axis.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxembed.errors import UnsupportedArchitectureError
from jaxembed.models.attention import AttentionConfig, AttentionMask, attention
from jaxembed.models.lora_delta import add_delta
from jaxembed.models.packing import running_count, token_positions
from jaxembed.models.partitioning import KERNEL_INIT as _kernel_init
from jaxembed.models.partitioning import ZEROS as _zeros
from jaxembed.models.partitioning import dense as _dense
from jaxembed.models.partitioning import layer_norm, scan_layers
from jaxembed.models.partitioning import with_axes as _axes
from jaxembed.parallel.sharding import constrain

# HF activation names → functions. "gelu" in HF is the exact (erf) form.
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}

# Families whose positions start after the padding index (fairseq heritage).
_OFFSET_POSITION_FAMILIES = frozenset({"roberta", "xlm-roberta", "camembert"})
ENCODER_FAMILIES = frozenset({"bert", "distilbert", *_OFFSET_POSITION_FAMILIES})


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """Architecture hyper-parameters of a BERT-family encoder."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int
    layer_norm_eps: float
    activation: str
    pad_token_id: int
    positions_from_padding: bool  # RoBERTa-style position ids
    naming: str = "bert"  # whose tensor names the checkpoint uses: "bert" or "distilbert"

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise UnsupportedArchitectureError(
                f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}"
            )
        if self.activation not in ACTIVATIONS:
            raise UnsupportedArchitectureError(
                f"activation {self.activation!r} is not supported; known: {sorted(ACTIVATIONS)}"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @classmethod
    def from_distilbert(cls, hf: Mapping[str, Any]) -> EncoderConfig:
        """DistilBERT: BERT's graph without token types, under its own config names."""
        if hf.get("sinusoidal_pos_embds"):
            raise UnsupportedArchitectureError(
                "DistilBERT with sinusoidal_pos_embds is not supported"
            )
        return cls(
            vocab_size=int(hf["vocab_size"]),
            hidden_size=int(hf["dim"]),
            num_layers=int(hf["n_layers"]),
            num_heads=int(hf["n_heads"]),
            intermediate_size=int(hf["hidden_dim"]),
            max_position_embeddings=int(hf["max_position_embeddings"]),
            type_vocab_size=0,
            layer_norm_eps=1e-12,  # fixed in DistilBERT's code
            activation=str(hf.get("activation", "gelu")),
            pad_token_id=int(hf.get("pad_token_id", 0) or 0),
            positions_from_padding=False,
            naming="distilbert",
        )

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any]) -> EncoderConfig:
        family = hf.get("model_type")
        if family == "distilbert":
            return cls.from_distilbert(hf)
        if family not in ENCODER_FAMILIES:
            raise UnsupportedArchitectureError(
                f"model_type {family!r} is not an encoder family ({sorted(ENCODER_FAMILIES)})"
            )
        position_type = hf.get("position_embedding_type", "absolute")
        if position_type != "absolute":
            raise UnsupportedArchitectureError(
                f"position_embedding_type {position_type!r} is not supported (only 'absolute')"
            )
        try:
            return cls(
                vocab_size=int(hf["vocab_size"]),
                hidden_size=int(hf["hidden_size"]),
                num_layers=int(hf["num_hidden_layers"]),
                num_heads=int(hf["num_attention_heads"]),
                intermediate_size=int(hf["intermediate_size"]),
                max_position_embeddings=int(hf["max_position_embeddings"]),
                type_vocab_size=int(hf.get("type_vocab_size", 0) or 0),
                layer_norm_eps=float(hf.get("layer_norm_eps", 1e-12)),
                activation=str(hf.get("hidden_act", "gelu")),
                pad_token_id=int(hf.get("pad_token_id", 0) or 0),
                positions_from_padding=family in _OFFSET_POSITION_FAMILIES,
            )
        except KeyError as e:
            raise UnsupportedArchitectureError(f"config.json lacks {e.args[0]!r}") from None


class _Embeddings(nn.Module):
    config: EncoderConfig
    dtype: jnp.dtype
    param_dtype: jnp.dtype

    @nn.compact
    def __call__(self, input_ids: jax.Array, segments: jax.Array | None = None) -> jax.Array:
        """[B, L] ids → [B, L, D]; `segments` (packed rows): positions restart per sequence."""
        cfg = self.config
        if (
            cfg.type_vocab_size > 1
        ):  # pairs fold their token types into the ids (engine/inputs/pairs.py)
            token_types, input_ids = jnp.divmod(input_ids, cfg.vocab_size)
        else:
            token_types = jnp.zeros_like(input_ids)
        embed = lambda n, name, axis: nn.Embed(  # noqa: E731
            n,
            cfg.hidden_size,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            embedding_init=_axes(nn.linear.default_embed_init, (axis, "embed")),
            name=name,
        )
        if cfg.positions_from_padding:
            # As HF's create_position_ids_from_input_ids: pad tokens keep padding_idx.
            not_pad = (input_ids != cfg.pad_token_id).astype(jnp.int32)
            positions = running_count(not_pad, segments) * not_pad + cfg.pad_token_id
        elif segments is not None:
            positions = token_positions(segments, segments)
        else:
            positions = jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)
        x = embed(cfg.vocab_size, "word", "vocab")(input_ids)
        x = x + embed(cfg.max_position_embeddings, "position", "position")(positions)
        if cfg.type_vocab_size:
            x = x + embed(cfg.type_vocab_size, "token_type", "token_type")(token_types)
        return _layer_norm(cfg, self.dtype, self.param_dtype, "norm")(x)


def _layer_norm(cfg: EncoderConfig, dtype: jnp.dtype, param_dtype: jnp.dtype, name: str):
    return layer_norm(cfg.layer_norm_eps, name, dtype=dtype, param_dtype=param_dtype)


class SelfAttention(nn.Module):
    """Multi-head attention with biased q/k/v/output projections; `mask` decides who sees
    whom (padding, causality, packed segments) and `attention` which kernel computes it
    (models/attention.py). Shared by the BERT family and the CLIP/SigLIP towers, whose
    configs have the same `num_heads`, `head_dim` and `hidden_size`."""

    config: EncoderConfig
    dtype: jnp.dtype
    param_dtype: jnp.dtype
    attention: AttentionConfig = AttentionConfig("auto")

    @nn.compact
    def __call__(self, x_bld: jax.Array, mask: AttentionMask, lora=None, ids=None) -> jax.Array:
        cfg = self.config
        proj = lambda name: nn.DenseGeneral(  # noqa: E731
            (cfg.num_heads, cfg.head_dim),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=_axes(_kernel_init, ("embed", "heads", "head_dim")),
            bias_init=_axes(_zeros, ("heads", "head_dim")),
            name=name,
        )
        heads = ("batch", "length", "heads", "head_dim")
        q_blhd, k_blhd, v_blhd = (
            constrain(add_delta(proj(name)(x_bld), x_bld, lora, name, ids), heads)
            for name in ("query", "key", "value")
        )
        ctx_blhd = constrain(attention(q_blhd, k_blhd, v_blhd, mask, self.attention), heads)
        out_bld = nn.DenseGeneral(
            cfg.hidden_size,
            axis=(-2, -1),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=_axes(_kernel_init, ("heads", "head_dim", "embed")),
            bias_init=_axes(_zeros, ("embed",)),
            name="output",
        )(ctx_blhd)
        ctx_bli = ctx_blhd.reshape(*ctx_blhd.shape[:2], -1)
        return add_delta(out_bld, ctx_bli, lora, "attention_output", ids)


class _EncoderLayer(nn.Module):
    config: EncoderConfig
    dtype: jnp.dtype
    param_dtype: jnp.dtype
    attention: AttentionConfig
    packed: bool

    @nn.compact
    def __call__(
        self, x_bld: jax.Array, segments_bl: jax.Array, lora=None, ids=None
    ) -> tuple[jax.Array, None]:
        cfg, dt, pdt = self.config, self.dtype, self.param_dtype
        mask = AttentionMask(segments_bl, packed=self.packed)
        attn = SelfAttention(cfg, dt, pdt, self.attention, name="attention")(x_bld, mask, lora, ids)
        x_bld = _layer_norm(cfg, dt, pdt, "attention_norm")(x_bld + attn)

        def dense(n: int, axes: tuple[str, str], name: str) -> nn.Dense:
            return _dense(n, axes, name, dtype=dt, param_dtype=pdt)

        h_blf = dense(cfg.intermediate_size, ("embed", "mlp"), "intermediate")(x_bld)
        h_blf = add_delta(h_blf, x_bld, lora, "intermediate", ids)
        h_blf = constrain(ACTIVATIONS[cfg.activation](h_blf), ("batch", "length", "mlp"))
        h_bld = dense(cfg.hidden_size, ("mlp", "embed"), "output")(h_blf)
        h_bld = add_delta(h_bld, h_blf, lora, "output", ids)
        out_bld = _layer_norm(cfg, dt, pdt, "output_norm")(x_bld + h_bld)
        return constrain(out_bld, ("batch", "length", "embed")), None


class Encoder(nn.Module):
    """token ids [B, L] + attention mask [B, L] → last hidden states [B, L, D].

    Rows are independent and masked keys get zero attention weight, so padded
    rows and padded positions cannot change any real output.
    """

    config: EncoderConfig
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    attention: AttentionConfig = AttentionConfig("auto")

    @nn.compact
    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array,
        lora=None,
        adapter_ids=None,
        packed: bool = False,
    ) -> jax.Array:
        """`lora`/`adapter_ids`: stacked adapters (jaxembed/lora.py) and each row's slot.

        `packed`: rows hold several sequences and `attention_mask` numbers them 1, 2, …
        (0 = padding); a token attends only within its own sequence and positions
        restart at each, so every sequence sees exactly what it would alone.
        """
        segments = attention_mask if packed else None
        x_bld = _Embeddings(self.config, self.dtype, self.param_dtype, name="embeddings")(
            input_ids, segments
        )
        x_bld = constrain(x_bld, ("batch", "length", "embed"))
        segments_bl = attention_mask.astype(jnp.int32) if packed else (attention_mask > 0)
        layers = scan_layers(_EncoderLayer, self.config.num_layers, (nn.broadcast, 0, nn.broadcast))
        x_bld, _ = layers(
            self.config, self.dtype, self.param_dtype, self.attention, packed, name="layers"
        )(x_bld, segments_bl.astype(jnp.int32), lora or {}, adapter_ids)
        return x_bld
