"""Flax Gemma3 text (EmbeddingGemma): a decoder stack run bidirectionally for embeddings.

As transformers' `Gemma3TextModel`: token embeddings scaled by √hidden; per layer
`x + post_attn_norm(attn(input_norm(x)))` then `x + post_ffw_norm(mlp(pre_ffw_norm(x)))`;
grouped-query attention with RMS-normed q and k, scores scaled by
`query_pre_attn_scalar^-½`, RoPE with one base for full-attention layers and another
for sliding-window layers (the config's `layer_types`), causal or — with
`use_bidirectional_attention` (EmbeddingGemma) — bidirectional, where a sliding layer
sees keys fewer than `sliding_window // 2 + 1` positions away on either side (as
transformers reads the same config); GELU-tanh gated
MLP; a final norm. Every RMSNorm scales by `1 + w` in float32.

float16 is refused (ModelLoadError at load): Gemma3's activations overflow it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxembed.errors import UnsupportedArchitectureError
from jaxembed.models.attention import AttentionConfig, AttentionMask, attention
from jaxembed.models.decoder import (
    NO_WINDOW,
    apply_rope,
    global_and_local_rope,
    layer_rope_and_window,
)
from jaxembed.models.encoder import ACTIVATIONS
from jaxembed.models.lora_delta import adapted
from jaxembed.models.packing import segment_ids, token_positions
from jaxembed.models.partitioning import ZEROS, embedding, projection, scan_layers, with_axes
from jaxembed.parallel.sharding import constrain

GEMMA3_FAMILIES = frozenset({"gemma3_text"})


@dataclasses.dataclass(frozen=True)
class Gemma3Config:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    activation: str
    global_layers: tuple[bool, ...]
    sliding_window: int
    global_theta: float
    local_theta: float
    query_scale: (
        float  # multiplies q so that attention's 1/√head_dim becomes query_pre_attn_scalar^-½
    )
    pad_token_id: int
    max_position_embeddings: int
    causal: bool = False
    type_vocab_size: int = 0

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any]) -> Gemma3Config:
        if hf.get("model_type") not in GEMMA3_FAMILIES:
            raise UnsupportedArchitectureError(
                f"model_type {hf.get('model_type')!r} is not gemma3_text"
            )
        if hf.get("attn_logit_softcapping") or hf.get("attention_bias"):
            raise UnsupportedArchitectureError(
                "Gemma3 attention soft-capping / biases are not supported"
            )
        try:
            layers = int(hf["num_hidden_layers"])
            pattern = int(hf.get("sliding_window_pattern", 6))
            types = hf.get("layer_types") or [
                "full_attention" if (i + 1) % pattern == 0 else "sliding_attention"
                for i in range(layers)
            ]
            rope = hf.get("rope_parameters") or {}
            for kind in rope.values():
                if (kind or {}).get("rope_type", "default") != "default":
                    raise UnsupportedArchitectureError("Gemma3 RoPE scaling is not supported")
            hidden, heads = int(hf["hidden_size"]), int(hf["num_attention_heads"])
            head_dim = int(hf.get("head_dim") or hidden // heads)
            scalar = float(hf.get("query_pre_attn_scalar") or head_dim)
            activation = str(
                hf.get("hidden_activation") or hf.get("hidden_act") or "gelu_pytorch_tanh"
            )
            if activation not in ACTIVATIONS:
                raise UnsupportedArchitectureError(f"activation {activation!r} is not supported")
            bidirectional = bool(hf.get("use_bidirectional_attention", False))
            window = int(hf.get("sliding_window") or NO_WINDOW)
            if bidirectional and window < NO_WINDOW:  # transformers: |q - k| < window // 2 + 1
                window = window // 2 + 1
            return cls(
                vocab_size=int(hf["vocab_size"]),
                hidden_size=hidden,
                intermediate_size=int(hf["intermediate_size"]),
                num_layers=layers,
                num_heads=heads,
                num_kv_heads=int(hf.get("num_key_value_heads") or heads),
                head_dim=head_dim,
                rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
                activation=activation,
                global_layers=tuple(t == "full_attention" for t in types),
                sliding_window=window,
                global_theta=float(
                    (rope.get("full_attention") or {}).get("rope_theta")
                    or hf.get("rope_theta", 1e6)
                ),
                local_theta=float(
                    (rope.get("sliding_attention") or {}).get("rope_theta")
                    or hf.get("rope_local_base_freq", 1e4)
                ),
                query_scale=math.sqrt(head_dim / scalar),
                pad_token_id=int(hf.get("pad_token_id") or 0),
                max_position_embeddings=int(hf.get("max_position_embeddings", 2048)),
                causal=not bidirectional,
            )
        except KeyError as e:
            raise UnsupportedArchitectureError(f"config.json lacks {e.args[0]!r}") from None


class GemmaRMSNorm(nn.Module):
    """`x / rms(x) * (1 + w)` computed in float32, cast back (Gemma's order)."""

    eps: float
    dtype: jnp.dtype
    param_dtype: jnp.dtype
    axis_name: str = "embed"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        w = self.param(
            "scale", with_axes(ZEROS, (self.axis_name,)), (x.shape[-1],), self.param_dtype
        )
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (normed * (1.0 + w.astype(jnp.float32))).astype(self.dtype)


class _Layer(nn.Module):
    config: Gemma3Config
    dtype: jnp.dtype
    param_dtype: jnp.dtype
    attention: AttentionConfig
    packed: bool

    def _attend(self, h, is_global, segments_bl, rope, proj):
        cfg, dt, pdt = self.config, self.dtype, self.param_dtype
        norm = functools.partial(GemmaRMSNorm, cfg.rms_norm_eps, dt, pdt, "head_dim")
        q_axes = ("batch", "length", "heads", "head_dim")
        kv_axes = ("batch", "length", "kv_heads", "head_dim")
        q = proj((cfg.num_heads, cfg.head_dim), ("embed", *q_axes[2:]), "q")(h)
        k = proj((cfg.num_kv_heads, cfg.head_dim), ("embed", *kv_axes[2:]), "k")(h)
        v = constrain(
            proj((cfg.num_kv_heads, cfg.head_dim), ("embed", *kv_axes[2:]), "v")(h), kv_axes
        )
        q = norm(name="q_norm")(constrain(q, q_axes))
        k = norm(name="k_norm")(constrain(k, kv_axes))
        cos, sin, window = layer_rope_and_window(is_global, rope, cfg.sliding_window)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cfg.query_scale != 1.0:
            q = q * jnp.asarray(cfg.query_scale, q.dtype)
        mask = AttentionMask(segments_bl, causal=cfg.causal, window=window, packed=self.packed)
        ctx = constrain(attention(q, constrain(k, kv_axes), v, mask, self.attention), q_axes)
        return proj(cfg.hidden_size, ("heads", "head_dim", "embed"), "o", axis=(-2, -1))(ctx)

    @nn.compact
    def __call__(self, x_bld, is_global, lora, segments_bl, rope, ids):
        cfg, dt, pdt = self.config, self.dtype, self.param_dtype

        def proj(features, axes, name, **kwargs):  # plus the row's PEFT LoRA delta, if any
            layer = projection(features, axes, name, dtype=dt, param_dtype=pdt, **kwargs)
            return adapted(layer, lora, name, ids)

        norm = lambda name: GemmaRMSNorm(cfg.rms_norm_eps, dt, pdt, name=name)  # noqa: E731
        attn = self._attend(norm("input_norm")(x_bld), is_global, segments_bl, rope, proj)
        x_bld = x_bld + norm("post_attention_norm")(attn)
        h = norm("pre_ffw_norm")(x_bld)
        gate = proj(cfg.intermediate_size, ("embed", "mlp"), "gate")(h)
        up = proj(cfg.intermediate_size, ("embed", "mlp"), "up")(h)
        h = constrain(ACTIVATIONS[cfg.activation](gate) * up, ("batch", "length", "mlp"))
        down = proj(cfg.hidden_size, ("mlp", "embed"), "down")(h)
        out = x_bld + norm("post_ffw_norm")(down)
        return constrain(out, ("batch", "length", "embed")), None


class Gemma3Text(nn.Module):
    """token ids [B, L] + attention mask [B, L] → final-normed hidden states [B, L, D]."""

    config: Gemma3Config
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    attention: AttentionConfig = AttentionConfig("auto")

    @nn.compact
    def __call__(
        self, input_ids, attention_mask, lora=None, adapter_ids=None, packed: bool = False
    ):
        """`packed`: `attention_mask` holds segment ids; windows and positions are per sequence.
        `lora`/`adapter_ids`: PEFT adapters on q/k/v/o/gate/up/down (jaxembed/lora.py)."""
        cfg, dt, pdt = self.config, self.dtype, self.param_dtype
        table = embedding(
            cfg.vocab_size, cfg.hidden_size, "vocab", "embed", dtype=dt, param_dtype=pdt
        )
        # transformers multiplies by √hidden cast to the weights' dtype.
        x = table(input_ids) * jnp.asarray(math.sqrt(cfg.hidden_size), pdt).astype(dt)
        x = constrain(x, ("batch", "length", "embed"))
        positions = token_positions(attention_mask, attention_mask if packed else None)
        rope = global_and_local_rope(positions, cfg.head_dim, (cfg.global_theta, cfg.local_theta))
        segments = segment_ids(attention_mask, packed)
        in_axes = (0, 0, nn.broadcast, nn.broadcast, nn.broadcast)
        layers = scan_layers(_Layer, cfg.num_layers, in_axes)
        x, _ = layers(cfg, dt, pdt, self.attention, packed, name="layers")(
            x, jnp.asarray(cfg.global_layers, dtype=bool), lora or {}, segments, rope, adapter_ids
        )
        return GemmaRMSNorm(cfg.rms_norm_eps, dt, pdt, name="final_norm")(x)
