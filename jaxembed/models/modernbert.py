"""Flax ModernBERT (gte-modernbert, nomic modernbert-embed): a pre-norm bidirectional encoder.

As transformers' `ModernBertModel`: token embeddings → LayerNorm; per layer
`x + attn(norm(x))` (layer 0 has no attention norm) then `x + mlp(norm(x))`, where
attention projects q/k/v with one fused `Wqkv`, applies RoPE, and attends globally
every `global_attn_every_n_layers`-th layer and within a sliding window otherwise
(`local_attention` tokens in all: ±half each side), each kind with its own RoPE
base; the MLP is GeGLU (`Wi` → input and gate halves); a final LayerNorm. Norms and
projections carry biases only as configured.

Layer 0 (which has no attention norm) runs on its own; layers 1.. are stacked with
`nn.scan`, and which of them are global (their window and RoPE base) is a scanned
input, so they share one compiled body. Positions
count real tokens (right-padded rows as transformers numbers them, restarting per
sequence in packed rows).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxembed.errors import UnsupportedArchitectureError
from jaxembed.models.attention import AttentionConfig, AttentionMask, attention
from jaxembed.models.decoder import NO_WINDOW, apply_rope, rope_cos_sin
from jaxembed.models.encoder import ACTIVATIONS
from jaxembed.models.packing import token_positions
from jaxembed.models.partitioning import KERNEL_INIT, ZEROS, layer_norm, scan_layers, with_axes
from jaxembed.parallel.sharding import constrain

MODERNBERT_FAMILIES = frozenset({"modernbert"})


@dataclasses.dataclass(frozen=True)
class ModernBertConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    norm_eps: float
    norm_bias: bool
    attention_bias: bool
    mlp_bias: bool
    activation: str
    global_layers: tuple[bool, ...]  # per layer: full attention (else sliding window)
    window: int  # a sliding layer's keys: |query - key| < window
    global_theta: float
    local_theta: float
    pad_token_id: int
    max_position_embeddings: int
    type_vocab_size: int = 0  # no token types (pairs are not folded: see fold_token_types)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise UnsupportedArchitectureError(
                f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}"
            )
        if self.activation not in ACTIVATIONS:
            raise UnsupportedArchitectureError(f"activation {self.activation!r} is not supported")
        if len(self.global_layers) != self.num_layers or self.num_layers < 2:
            raise UnsupportedArchitectureError("one layer type per layer, two layers or more")

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any]) -> ModernBertConfig:
        """Both spellings: `layer_types` / `rope_parameters` per type (newer configs), or
        `global_attn_every_n_layers` with `global_rope_theta` / `local_rope_theta`."""
        if hf.get("model_type") not in MODERNBERT_FAMILIES:
            raise UnsupportedArchitectureError(
                f"model_type {hf.get('model_type')!r} is not modernbert"
            )
        try:
            layers = int(hf["num_hidden_layers"])
            every = int(hf.get("global_attn_every_n_layers", 3))
            types = hf.get("layer_types") or [
                "full_attention" if i % every == 0 else "sliding_attention" for i in range(layers)
            ]
            rope = hf.get("rope_parameters") or {}
            for kind in rope.values():
                if (kind or {}).get("rope_type", "default") != "default":
                    raise UnsupportedArchitectureError("ModernBERT RoPE scaling is not supported")
            global_theta = (rope.get("full_attention") or {}).get("rope_theta") or hf.get(
                "global_rope_theta", 160_000.0
            )
            local_theta = (rope.get("sliding_attention") or {}).get("rope_theta") or hf.get(
                "local_rope_theta", 10_000.0
            )
            return cls(
                vocab_size=int(hf["vocab_size"]),
                hidden_size=int(hf["hidden_size"]),
                intermediate_size=int(hf["intermediate_size"]),
                num_layers=layers,
                num_heads=int(hf["num_attention_heads"]),
                norm_eps=float(hf.get("norm_eps", 1e-5)),
                norm_bias=bool(hf.get("norm_bias", False)),
                attention_bias=bool(hf.get("attention_bias", False)),
                mlp_bias=bool(hf.get("mlp_bias", False)),
                activation=str(hf.get("hidden_activation", "gelu")),
                global_layers=tuple(t == "full_attention" for t in types),
                # transformers: |q - k| <= local_attention // 2
                window=int(hf.get("local_attention", 128)) // 2 + 1,
                global_theta=float(global_theta),
                local_theta=float(local_theta),
                pad_token_id=int(hf.get("pad_token_id") or 0),
                max_position_embeddings=int(hf.get("max_position_embeddings", 8192)),
            )
        except KeyError as e:
            raise UnsupportedArchitectureError(f"config.json lacks {e.args[0]!r}") from None


def _norm(cfg: ModernBertConfig, dtype, param_dtype, name: str) -> nn.LayerNorm:
    return layer_norm(cfg.norm_eps, name, dtype=dtype, param_dtype=param_dtype, bias=cfg.norm_bias)


class _Layer(nn.Module):
    config: ModernBertConfig
    dtype: jnp.dtype
    param_dtype: jnp.dtype
    attention: AttentionConfig
    packed: bool
    first: bool = False  # layer 0 attends to the embeddings as they are (no attention norm)

    @nn.compact
    def __call__(self, x_bld, is_global, segments_bl, rope):
        """`is_global`: this layer attends to all tokens; `rope`: global and local cos/sin."""
        cfg, dt, pdt = self.config, self.dtype, self.param_dtype
        h = x_bld if self.first else _norm(cfg, dt, pdt, "attention_norm")(x_bld)
        qkv = nn.DenseGeneral(
            (3, cfg.num_heads, cfg.head_dim),
            use_bias=cfg.attention_bias,
            dtype=dt,
            param_dtype=pdt,
            kernel_init=with_axes(KERNEL_INIT, ("embed", "qkv", "heads", "head_dim")),
            bias_init=with_axes(ZEROS, ("qkv", "heads", "head_dim")),
            name="qkv",
        )(h)
        heads = ("batch", "length", "heads", "head_dim")
        q, k, v = (constrain(qkv[:, :, i], heads) for i in range(3))
        (g_cos, g_sin), (l_cos, l_sin) = rope
        cos, sin = jnp.where(is_global, g_cos, l_cos), jnp.where(is_global, g_sin, l_sin)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        window = jnp.where(is_global, NO_WINDOW, cfg.window)
        mask = AttentionMask(segments_bl, window=window, packed=self.packed)
        ctx = constrain(attention(q, k, v, mask, self.attention), heads)
        out = nn.DenseGeneral(
            cfg.hidden_size,
            axis=(-2, -1),
            use_bias=cfg.attention_bias,
            dtype=dt,
            param_dtype=pdt,
            kernel_init=with_axes(KERNEL_INIT, ("heads", "head_dim", "embed")),
            bias_init=with_axes(ZEROS, ("embed",)),
            name="output",
        )(ctx)
        x_bld = x_bld + out
        h = _norm(cfg, dt, pdt, "mlp_norm")(x_bld)
        wi = nn.DenseGeneral(
            (2, cfg.intermediate_size),
            use_bias=cfg.mlp_bias,
            dtype=dt,
            param_dtype=pdt,
            kernel_init=with_axes(KERNEL_INIT, ("embed", "glu", "mlp")),
            bias_init=with_axes(ZEROS, ("glu", "mlp")),
            name="wi",
        )(h)
        h = constrain(
            ACTIVATIONS[cfg.activation](wi[..., 0, :]) * wi[..., 1, :], ("batch", "length", "mlp")
        )
        down = nn.Dense(
            cfg.hidden_size,
            use_bias=cfg.mlp_bias,
            dtype=dt,
            param_dtype=pdt,
            kernel_init=with_axes(KERNEL_INIT, ("mlp", "embed")),
            bias_init=with_axes(ZEROS, ("embed",)),
            name="wo",
        )(h)
        return constrain(x_bld + down, ("batch", "length", "embed")), None


class ModernBert(nn.Module):
    """token ids [B, L] + attention mask [B, L] → final-normed hidden states [B, L, D]."""

    config: ModernBertConfig
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
        """`packed`: `attention_mask` holds segment ids; windows and positions are per sequence.
        LoRA adapters are not supported for this family (`lora` must be empty)."""
        if lora:
            raise UnsupportedArchitectureError("LoRA adapters are not supported for ModernBERT")
        cfg, dt, pdt = self.config, self.dtype, self.param_dtype
        x = nn.Embed(
            cfg.vocab_size,
            cfg.hidden_size,
            dtype=dt,
            param_dtype=pdt,
            embedding_init=with_axes(nn.linear.default_embed_init, ("vocab", "embed")),
            name="embed",
        )(input_ids)
        x = constrain(_norm(cfg, dt, pdt, "embed_norm")(x), ("batch", "length", "embed"))
        positions = token_positions(attention_mask, attention_mask if packed else None)
        rope = tuple(
            rope_cos_sin(positions, cfg.head_dim, theta, 1.0)
            for theta in (cfg.global_theta, cfg.local_theta)
        )
        segments = attention_mask.astype(jnp.int32) if packed else (attention_mask > 0)
        segments = segments.astype(jnp.int32)
        is_global = jnp.asarray(cfg.global_layers, dtype=bool)
        x, _ = _Layer(cfg, dt, pdt, self.attention, packed, first=True, name="first")(
            x, is_global[0], segments, rope
        )
        layers = scan_layers(_Layer, cfg.num_layers - 1, (0, nn.broadcast, nn.broadcast))
        x, _ = layers(cfg, dt, pdt, self.attention, packed, name="layers")(
            x, is_global[1:], segments, rope
        )
        return _norm(cfg, dt, pdt, "final_norm")(x)
