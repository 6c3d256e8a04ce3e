"""Flax NomicBERT (nomic-embed-text-v1 / v1.5): a post-norm BERT with rotary positions and SwiGLU.

As transformers' `NomicBertModel` (and nomic's own code, whose tensor names the
checkpoints keep): word + token-type embeddings → LayerNorm (no position table);
per layer `x = norm1(x + attn(x))`, `x = norm2(x + fc2(act(fc12(x)) * fc11(x)))`,
with q/k/v from one fused `Wqkv`, rotary positions over the whole head
(non-interleaved halves, base `rotary_emb_base`), and no projection biases.

Both config spellings are read: transformers 5's (`hidden_size`, `rope_parameters`)
and nomic's original GPT-2-style one (`n_embd`, `n_head`, `rotary_emb_base`, ...).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxembed.errors import UnsupportedArchitectureError
from jaxembed.models.attention import AttentionConfig, AttentionMask, attention
from jaxembed.models.decoder import apply_rope, rope_cos_sin
from jaxembed.models.encoder import ACTIVATIONS
from jaxembed.models.packing import segment_ids, token_positions
from jaxembed.models.partitioning import embedding, layer_norm, projection, scan_layers
from jaxembed.parallel.sharding import constrain

NOMIC_FAMILIES = frozenset({"nomic_bert"})
# nomic's names for the activation of its gated MLP.
_GATED = {"swiglu": "silu", "geglu": "gelu"}


def _first(hf: Mapping[str, Any], *names: str, default: Any = None) -> Any:
    for name in names:
        if hf.get(name) is not None:
            return hf[name]
    if default is None:
        raise UnsupportedArchitectureError(f"config.json lacks {names[0]!r}")
    return default


@dataclasses.dataclass(frozen=True)
class NomicBertConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    layer_norm_eps: float
    activation: str
    rope_theta: float
    token_type_rows: int  # rows of the token-type table (every input has type 0)
    pad_token_id: int
    max_position_embeddings: int
    type_vocab_size: int = 0  # token types are not folded into ids (models/encoder.py)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any]) -> NomicBertConfig:
        if hf.get("model_type") not in NOMIC_FAMILIES:
            raise UnsupportedArchitectureError(
                f"model_type {hf.get('model_type')!r} is not nomic_bert"
            )
        for flag in ("qkv_proj_bias", "mlp_fc1_bias", "mlp_fc2_bias", "prenorm", "use_rms_norm"):
            if hf.get(flag):
                raise UnsupportedArchitectureError(f"NomicBERT with {flag}=true is not supported")
        if hf.get("rotary_emb_interleaved") or hf.get("rotary_emb_fraction", 1.0) != 1.0:
            raise UnsupportedArchitectureError(
                "NomicBERT rotary embeddings must cover the whole head, non-interleaved"
            )
        if hf.get("rotary_scaling_factor"):
            raise UnsupportedArchitectureError(
                "rotary_scaling_factor (nomic's dynamic NTK scaling beyond n_positions) is not "
                "supported: it depends on each batch's padded length; leave it unset"
            )
        rope = hf.get("rope_parameters") or {}
        if rope.get("rope_type", "default") != "default":
            raise UnsupportedArchitectureError("only default RoPE is supported for NomicBERT")
        activation = str(_first(hf, "hidden_act", "activation_function", default="silu"))
        activation = _GATED.get(activation, activation)
        if activation not in ACTIVATIONS:
            raise UnsupportedArchitectureError(f"activation {activation!r} is not supported")
        hidden = int(_first(hf, "hidden_size", "n_embd"))
        return cls(
            vocab_size=int(hf["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(_first(hf, "intermediate_size", "n_inner", default=4 * hidden)),
            num_layers=int(_first(hf, "num_hidden_layers", "n_layer")),
            num_heads=int(_first(hf, "num_attention_heads", "n_head")),
            layer_norm_eps=float(_first(hf, "layer_norm_eps", "layer_norm_epsilon", default=1e-12)),
            activation=activation,
            rope_theta=float(rope.get("rope_theta") or hf.get("rotary_emb_base") or 1000.0),
            token_type_rows=int(hf.get("type_vocab_size", 2)),
            pad_token_id=int(hf.get("pad_token_id") or 0),
            max_position_embeddings=int(
                _first(hf, "max_position_embeddings", "n_positions", default=2048)
            ),
        )


def _norm(cfg: NomicBertConfig, dtype, param_dtype, name: str) -> nn.LayerNorm:
    return layer_norm(cfg.layer_norm_eps, name, dtype=dtype, param_dtype=param_dtype)


class _Layer(nn.Module):
    config: NomicBertConfig
    dtype: jnp.dtype
    param_dtype: jnp.dtype
    attention: AttentionConfig
    packed: bool

    @nn.compact
    def __call__(self, x_bld, segments_bl, cos, sin):
        cfg, dt, pdt = self.config, self.dtype, self.param_dtype
        proj = functools.partial(projection, dtype=dt, param_dtype=pdt)
        axes = ("embed", "qkv", "heads", "head_dim")
        qkv = proj((3, cfg.num_heads, cfg.head_dim), axes, "qkv")(x_bld)
        heads = ("batch", "length", "heads", "head_dim")
        q, k, v = (constrain(qkv[:, :, i], heads) for i in range(3))
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        mask = AttentionMask(segments_bl, packed=self.packed)
        ctx = constrain(attention(q, k, v, mask, self.attention), heads)
        out = proj(cfg.hidden_size, ("heads", "head_dim", "embed"), "output", axis=(-2, -1))(ctx)
        x_bld = _norm(cfg, dt, pdt, "attention_norm")(x_bld + out)
        up = proj(cfg.intermediate_size, ("embed", "mlp"), "up")(x_bld)
        gate = proj(cfg.intermediate_size, ("embed", "mlp"), "gate")(x_bld)
        h = constrain(ACTIVATIONS[cfg.activation](gate) * up, ("batch", "length", "mlp"))
        down = proj(cfg.hidden_size, ("mlp", "embed"), "down")(h)
        out_bld = _norm(cfg, dt, pdt, "mlp_norm")(x_bld + down)
        return constrain(out_bld, ("batch", "length", "embed")), None


class NomicBert(nn.Module):
    """token ids [B, L] + attention mask [B, L] → last hidden states [B, L, D]."""

    config: NomicBertConfig
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
        """`packed`: `attention_mask` holds segment ids; positions restart per sequence.
        LoRA adapters are not supported for this family (`lora` must be empty)."""
        if lora:
            raise UnsupportedArchitectureError("LoRA adapters are not supported for NomicBERT")
        cfg, dt, pdt = self.config, self.dtype, self.param_dtype

        embed = functools.partial(embedding, features=cfg.hidden_size, dtype=dt, param_dtype=pdt)

        x = embed(cfg.vocab_size, axis="vocab", name="word")(input_ids)
        types = embed(cfg.token_type_rows, axis="token_type", name="token_type")
        x = x + types(jnp.zeros_like(input_ids))
        x = constrain(_norm(cfg, dt, pdt, "embed_norm")(x), ("batch", "length", "embed"))
        positions = token_positions(attention_mask, attention_mask if packed else None)
        cos, sin = rope_cos_sin(positions, cfg.head_dim, cfg.rope_theta, 1.0)
        layers = scan_layers(_Layer, cfg.num_layers, (nn.broadcast,) * 3)
        x, _ = layers(cfg, dt, pdt, self.attention, packed, name="layers")(
            x, segment_ids(attention_mask, packed), cos, sin
        )
        return x
