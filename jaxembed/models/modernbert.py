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
from jaxembed.models.decoder import apply_rope, global_and_local_rope, layer_rope_and_window
from jaxembed.models.encoder import ACTIVATIONS
from jaxembed.models.lora_delta import adapted
from jaxembed.models.packing import segment_ids, token_positions
from jaxembed.models.partitioning import embedding, layer_norm, projection, scan_layers
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
    type_vocab_size: int = 0  # no token types (pairs are not folded: engine/inputs/pairs.py)

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
    def __call__(self, x_bld, is_global, lora, segments_bl, rope, ids):
        """`is_global`: this layer attends to all tokens; `rope`: global and local cos/sin;
        `lora`/`ids`: this layer's PEFT adapter stacks and each row's slot."""
        cfg, dt, pdt = self.config, self.dtype, self.param_dtype
        h = x_bld if self.first else _norm(cfg, dt, pdt, "attention_norm")(x_bld)

        def proj(features, axes, name, **kwargs):  # plus the row's PEFT LoRA delta, if any
            layer = projection(features, axes, name, dtype=dt, param_dtype=pdt, **kwargs)
            return adapted(layer, lora, name, ids)

        axes = ("embed", "qkv", "heads", "head_dim")
        qkv = proj((3, cfg.num_heads, cfg.head_dim), axes, "qkv", bias=cfg.attention_bias)(h)
        heads = ("batch", "length", "heads", "head_dim")
        q, k, v = (constrain(qkv[:, :, i], heads) for i in range(3))
        cos, sin, window = layer_rope_and_window(is_global, rope, cfg.window)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        mask = AttentionMask(segments_bl, window=window, packed=self.packed)
        ctx = constrain(attention(q, k, v, mask, self.attention), heads)
        out_axes = ("heads", "head_dim", "embed")
        out = proj(cfg.hidden_size, out_axes, "output", bias=cfg.attention_bias, axis=(-2, -1))
        x_bld = x_bld + out(ctx)
        h = _norm(cfg, dt, pdt, "mlp_norm")(x_bld)
        wi = proj((2, cfg.intermediate_size), ("embed", "glu", "mlp"), "wi", bias=cfg.mlp_bias)(h)
        gated = ACTIVATIONS[cfg.activation](wi[..., 0, :]) * wi[..., 1, :]
        h = constrain(gated, ("batch", "length", "mlp"))
        down = proj(cfg.hidden_size, ("mlp", "embed"), "wo", bias=cfg.mlp_bias)(h)
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
        `lora`/`adapter_ids`: PEFT adapters on Wqkv/Wo/Wi/Wo (jaxembed/lora.py); layer 0 takes
        the stacks' first slice, the scanned layers the rest."""
        lora = lora or {}
        cfg, dt, pdt = self.config, self.dtype, self.param_dtype
        table = embedding(
            cfg.vocab_size, cfg.hidden_size, "vocab", "embed", dtype=dt, param_dtype=pdt
        )
        x = table(input_ids)
        x = constrain(_norm(cfg, dt, pdt, "embed_norm")(x), ("batch", "length", "embed"))
        positions = token_positions(attention_mask, attention_mask if packed else None)
        rope = global_and_local_rope(positions, cfg.head_dim, (cfg.global_theta, cfg.local_theta))
        segments = segment_ids(attention_mask, packed)
        is_global = jnp.asarray(cfg.global_layers, dtype=bool)
        first, rest = jax.tree.map(lambda a: a[0], lora), jax.tree.map(lambda a: a[1:], lora)
        x, _ = _Layer(cfg, dt, pdt, self.attention, packed, first=True, name="first")(
            x, is_global[0], first, segments, rope, adapter_ids
        )
        in_axes = (0, 0, nn.broadcast, nn.broadcast, nn.broadcast)
        layers = scan_layers(_Layer, cfg.num_layers - 1, in_axes)
        x, _ = layers(cfg, dt, pdt, self.attention, packed, name="layers")(
            x, is_global[1:], rest, segments, rope, adapter_ids
        )
        return _norm(cfg, dt, pdt, "final_norm")(x)
