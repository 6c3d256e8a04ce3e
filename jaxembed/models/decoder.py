"""Flax decoder-only transformers used as embedders: Mistral, Qwen2, Qwen3.

RoPE (theta and linear scaling from the config), grouped-query attention,
RMSNorm (plus Qwen3's per-head q/k norm), SwiGLU MLP, causal or bidirectional
masking and per-layer sliding windows. Positions count real tokens only, so a
row's result is the same whether it is padded on the left or the right.

Layers are stacked with `nn.scan`; the per-layer sliding window is a scanned
input, so layers with different windows still share one compiled body.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxembed.errors import UnsupportedArchitectureError
from jaxembed.model_types import DECODER_FAMILIES
from jaxembed.models.attention import AttentionConfig, AttentionMask, attention
from jaxembed.models.encoder import ACTIVATIONS
from jaxembed.models.lora_delta import add_delta
from jaxembed.models.packing import segment_ids, token_positions
from jaxembed.models.partitioning import KERNEL_INIT as _kernel_init
from jaxembed.models.partitioning import ZEROS as _zeros
from jaxembed.models.partitioning import embedding, scan_layers
from jaxembed.models.partitioning import with_axes as _axes
from jaxembed.parallel.sharding import constrain

NO_WINDOW = 2**30  # "window" of a full-attention layer


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    family: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_linear_factor: float  # positions are divided by this ("linear" RoPE scaling)
    qkv_bias: bool
    output_bias: bool
    qk_norm: bool
    sliding_windows: tuple[int, ...]  # per layer; NO_WINDOW for full attention
    activation: str
    pad_token_id: int
    eos_token_id: int | None
    causal: bool = True
    # Multimodal RoPE (Qwen2-VL / Qwen3-VL): how many rotary frequencies follow the temporal,
    # height and width positions; `mrope_interleaved` is Qwen3-VL's T,H,W,T,H,W… assignment
    # (Qwen2-VL: contiguous sections). Empty: one position per token.
    mrope_sections: tuple[int, ...] = ()
    mrope_interleaved: bool = False

    @property
    def uniform_window(self) -> int | bool | None:
        """The window every layer shares (None: full attention), or False if layers differ."""
        if len(set(self.sliding_windows)) != 1:
            return False
        return None if self.sliding_windows[0] >= NO_WINDOW else self.sliding_windows[0]

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise UnsupportedArchitectureError(
                f"num_attention_heads {self.num_heads} is not a multiple of num_key_value_heads {self.num_kv_heads}"
            )
        if len(self.sliding_windows) != self.num_layers:
            raise UnsupportedArchitectureError("one sliding window entry per layer is required")
        if self.activation not in ACTIVATIONS:
            raise UnsupportedArchitectureError(f"activation {self.activation!r} is not supported")

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any]) -> DecoderConfig:
        family = hf.get("model_type")
        if family not in DECODER_FAMILIES:
            raise UnsupportedArchitectureError(f"model_type {family!r} is not a decoder family")
        try:
            layers = int(hf["num_hidden_layers"])
            heads = int(hf["num_attention_heads"])
            hidden = int(hf["hidden_size"])
            rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
            rope_type = rope.get("rope_type", rope.get("type", "default"))
            if rope_type not in ("default", "linear"):
                raise UnsupportedArchitectureError(
                    f"RoPE scaling {rope_type!r} is not supported (only default and linear)"
                )
            theta = float(rope.get("rope_theta") or hf.get("rope_theta") or 10000.0)
            window = hf.get("sliding_window")
            if family == "mistral":
                windows = [window] * layers
            else:  # Qwen: per-layer types, or the older use_sliding_window/max_window_layers pair
                types = hf.get("layer_types") or [
                    "sliding_attention"
                    if hf.get("use_sliding_window")
                    and i >= int(hf.get("max_window_layers", layers))
                    else "full_attention"
                    for i in range(layers)
                ]
                windows = [window if t == "sliding_attention" else None for t in types]
            eos = hf.get("eos_token_id")
            eos = eos[0] if isinstance(eos, list) else eos
            return cls(
                family=family,
                vocab_size=int(hf["vocab_size"]),
                hidden_size=hidden,
                intermediate_size=int(hf["intermediate_size"]),
                num_layers=layers,
                num_heads=heads,
                num_kv_heads=int(hf.get("num_key_value_heads") or heads),
                head_dim=int(hf.get("head_dim") or hidden // heads),
                rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
                rope_theta=theta,
                rope_linear_factor=float(rope.get("factor", 1.0)) if rope_type == "linear" else 1.0,
                qkv_bias=family == "qwen2" or bool(hf.get("attention_bias")),
                output_bias=family != "qwen2" and bool(hf.get("attention_bias")),
                qk_norm=family == "qwen3",
                sliding_windows=tuple(int(w) if w else NO_WINDOW for w in windows),
                activation=str(hf.get("hidden_act", "silu")),
                pad_token_id=int(hf.get("pad_token_id") or 0),
                eos_token_id=None if eos is None else int(eos),
            )
        except KeyError as e:
            raise UnsupportedArchitectureError(f"config.json lacks {e.args[0]!r}") from None


class RMSNorm(nn.Module):
    """HF's RMSNorm: normalise in float32, cast back, then scale."""

    eps: float
    dtype: jnp.dtype
    param_dtype: jnp.dtype
    axis_name: str = "embed"  # logical name of the normalised (last) axis

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        init = _axes(nn.initializers.ones, (self.axis_name,))
        scale = self.param("scale", init, (x.shape[-1],), self.param_dtype)
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return scale.astype(self.dtype) * normed.astype(self.dtype)


def _inverse_frequencies(head_dim: int, theta: float) -> jax.Array:
    return 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))


def _cos_sin(freqs: jax.Array):
    """[..., Dh/2] angles → cos/sin [..., Dh] in HF's half-split layout."""
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def rope_cos_sin(positions_bl: jax.Array, head_dim: int, theta: float, linear_factor: float):
    """cos/sin tables [B, L, head_dim] in float32 (HF's half-split layout)."""
    positions = positions_bl.astype(jnp.float32) / linear_factor
    return _cos_sin(positions[..., None] * _inverse_frequencies(head_dim, theta))


def mrope_axes(sections: Sequence[int], interleaved: bool, head_dim: int) -> np.ndarray:
    """Which position (0 temporal, 1 height, 2 width) each of the head_dim/2 rotary
    frequencies reads: contiguous sections (Qwen2-VL), or every third frequency from 1 and
    from 2 up to 3·section taking height and width (Qwen3-VL's interleaved layout)."""
    axes = np.zeros(head_dim // 2, np.int32)
    if interleaved:
        for axis in (1, 2):
            axes[axis : 3 * sections[axis] : 3] = axis
    else:
        axes[:] = np.repeat(np.arange(len(sections)), sections)[: head_dim // 2]
    return axes


def mrope_cos_sin(positions_3bl: jax.Array, cfg: DecoderConfig):
    """cos/sin tables [B, L, head_dim] for (temporal, height, width) positions [3, B, L]."""
    axes = mrope_axes(cfg.mrope_sections, cfg.mrope_interleaved, cfg.head_dim)
    chosen = jnp.take(positions_3bl.astype(jnp.float32), axes, axis=0)  # [Dh/2, B, L]
    return _cos_sin(
        jnp.moveaxis(chosen, 0, -1) * _inverse_frequencies(cfg.head_dim, cfg.rope_theta)
    )


def deepstack_residual(layer: jax.Array, tokens_kmd: jax.Array, source_bl: jax.Array, dtype):
    """Qwen3-VL's deep stack: after decoder layer k < K, the vision tower's k-th extra
    features are added at the visual positions (`source`: the row of `tokens` each position
    takes, −1 for text)."""
    depth = tokens_kmd.shape[0]
    feats = jnp.take(tokens_kmd[jnp.minimum(layer, depth - 1)], jnp.maximum(source_bl, 0), axis=0)
    keep = (source_bl >= 0) & (layer < depth)
    return jnp.where(keep[..., None], feats, 0).astype(dtype)


def global_and_local_rope(positions_bl: jax.Array, head_dim: int, thetas: tuple[float, float]):
    """cos/sin tables for the two RoPE bases of models whose layers alternate between full
    attention (`thetas[0]`) and a sliding window (`thetas[1]`): ModernBERT, Gemma3."""
    return tuple(rope_cos_sin(positions_bl, head_dim, theta, 1.0) for theta in thetas)


def layer_rope_and_window(is_global: jax.Array, tables, window: int):
    """A layer's cos/sin and attention window from its (scanned) kind: the global base and no
    window, or the local base and `window`."""
    (g_cos, g_sin), (l_cos, l_sin) = tables
    cos, sin = jnp.where(is_global, g_cos, l_cos), jnp.where(is_global, g_sin, l_sin)
    return cos, sin, jnp.where(is_global, NO_WINDOW, window)


def apply_rope(x_blhd: jax.Array, cos_bld: jax.Array, sin_bld: jax.Array) -> jax.Array:
    half = x_blhd.shape[-1] // 2
    rotated = jnp.concatenate([-x_blhd[..., half:], x_blhd[..., :half]], axis=-1)
    cos, sin = (
        cos_bld[:, :, None, :].astype(x_blhd.dtype),
        sin_bld[:, :, None, :].astype(x_blhd.dtype),
    )
    return x_blhd * cos + rotated * sin


class _Attention(nn.Module):
    config: DecoderConfig
    dtype: jnp.dtype
    param_dtype: jnp.dtype
    attention: AttentionConfig

    @nn.compact
    def __call__(self, x_bld, mask: AttentionMask, cos_bld, sin_bld, lora=None, ids=None):
        cfg, dt, pdt = self.config, self.dtype, self.param_dtype
        dense = lambda heads, axis, name, bias: nn.DenseGeneral(  # noqa: E731
            (heads, cfg.head_dim),
            use_bias=bias,
            dtype=dt,
            param_dtype=pdt,
            kernel_init=_axes(_kernel_init, ("embed", axis, "head_dim")),
            bias_init=_axes(_zeros, (axis, "head_dim")),
            name=name,
        )
        q_axes = ("batch", "length", "heads", "head_dim")
        kv_axes = ("batch", "length", "kv_heads", "head_dim")
        q = dense(cfg.num_heads, "heads", "q", cfg.qkv_bias)(x_bld)
        k = dense(cfg.num_kv_heads, "kv_heads", "k", cfg.qkv_bias)(x_bld)
        v = dense(cfg.num_kv_heads, "kv_heads", "v", cfg.qkv_bias)(x_bld)
        q = constrain(add_delta(q, x_bld, lora, "q", ids), q_axes)
        k = constrain(add_delta(k, x_bld, lora, "k", ids), kv_axes)
        v = constrain(add_delta(v, x_bld, lora, "v", ids), kv_axes)
        if cfg.qk_norm:
            q = RMSNorm(cfg.rms_norm_eps, dt, pdt, "head_dim", name="q_norm")(q)
            k = RMSNorm(cfg.rms_norm_eps, dt, pdt, "head_dim", name="k_norm")(k)
        q, k = apply_rope(q, cos_bld, sin_bld), apply_rope(k, cos_bld, sin_bld)

        b, length = x_bld.shape[:2]
        ctx = attention(q, k, v, mask, self.attention)
        ctx = constrain(ctx, q_axes)
        out = nn.DenseGeneral(
            cfg.hidden_size,
            axis=(-2, -1),
            use_bias=cfg.output_bias,
            dtype=dt,
            param_dtype=pdt,
            kernel_init=_axes(_kernel_init, ("heads", "head_dim", "embed")),
            bias_init=_axes(_zeros, ("embed",)),
            name="o",
        )(ctx)
        return add_delta(out, ctx.reshape(b, length, -1), lora, "o", ids)


class _DecoderLayer(nn.Module):
    config: DecoderConfig
    dtype: jnp.dtype
    param_dtype: jnp.dtype
    attention: AttentionConfig
    packed: bool

    @nn.compact
    def __call__(self, x_bld, window, lora, segments_bl, cos_bld, sin_bld, ids, layer, deep):
        cfg, dt, pdt = self.config, self.dtype, self.param_dtype
        # One window for every layer is a static fact (what fused kernels need); layers
        # that differ read theirs from the scanned `window`.
        uniform = cfg.uniform_window
        mask = AttentionMask(
            segments_bl,
            causal=cfg.causal,
            window=window if uniform is False else uniform,
            packed=self.packed,
        )
        norm = lambda name: RMSNorm(cfg.rms_norm_eps, dt, pdt, name=name)  # noqa: E731
        dense = lambda n, axes, name: nn.Dense(  # noqa: E731
            n,
            use_bias=False,
            dtype=dt,
            param_dtype=pdt,
            kernel_init=_axes(_kernel_init, axes),
            name=name,
        )
        h = norm("input_norm")(x_bld)
        x_bld = x_bld + _Attention(cfg, dt, pdt, self.attention, name="attention")(
            h, mask, cos_bld, sin_bld, lora, ids
        )
        h = norm("post_attention_norm")(x_bld)
        gate = add_delta(
            dense(cfg.intermediate_size, ("embed", "mlp"), "gate")(h), h, lora, "gate", ids
        )
        up = add_delta(dense(cfg.intermediate_size, ("embed", "mlp"), "up")(h), h, lora, "up", ids)
        h = constrain(ACTIVATIONS[cfg.activation](gate) * up, ("batch", "length", "mlp"))
        down = dense(cfg.hidden_size, ("mlp", "embed"), "down")(h)
        out = x_bld + add_delta(down, h, lora, "down", ids)
        if deep is not None:
            out = out + deepstack_residual(layer, *deep, dt)
        return constrain(out, ("batch", "length", "embed")), None


class Decoder(nn.Module):
    """token ids [B, L] + attention mask [B, L] → final-normed hidden states [B, L, D]."""

    config: DecoderConfig
    dtype: jnp.dtype = jnp.bfloat16
    param_dtype: jnp.dtype = jnp.bfloat16
    attention: AttentionConfig = AttentionConfig("auto")

    @nn.compact
    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array,
        lora=None,
        adapter_ids=None,
        packed: bool = False,
        embeds_override: tuple[jax.Array, jax.Array] | None = None,
        positions_override: jax.Array | None = None,
        deepstack: tuple[jax.Array, jax.Array] | None = None,
    ) -> jax.Array:
        """`lora`/`adapter_ids`: stacked adapters (jaxembed/lora.py) and each row's slot.

        `packed`: `attention_mask` holds segment ids (jaxembed/models/packing.py); each
        sequence attends within itself and its RoPE positions start at 0.
        `embeds_override`: (embeddings [B, L, D], where [B, L]) that replace the token
        embeddings at `where` (a vision-language model's image features at its image
        placeholder tokens, models/qwen_vl.py).
        `positions_override`: (temporal, height, width) positions [3, B, L] for multimodal
        RoPE (config `mrope_sections`). `deepstack`: (features [K, M, D], source [B, L])
        added after the first K layers (`deepstack_residual`).
        """
        cfg = self.config
        if positions_override is not None:
            cos, sin = mrope_cos_sin(positions_override, cfg)
        else:  # positions count real tokens: left and right padding give the same numbers
            positions = token_positions(attention_mask, attention_mask if packed else None)
            cos, sin = rope_cos_sin(positions, cfg.head_dim, cfg.rope_theta, cfg.rope_linear_factor)
        segments = segment_ids(attention_mask, packed)
        table = embedding(
            cfg.vocab_size,
            cfg.hidden_size,
            "vocab",
            "embed",
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        x = table(input_ids)
        if embeds_override is not None:
            embeds, where = embeds_override
            x = jnp.where(where[..., None], embeds.astype(x.dtype), x)
        x = constrain(x, ("batch", "length", "embed"))
        layers = scan_layers(
            _DecoderLayer,
            cfg.num_layers,
            (0, 0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast, 0, nn.broadcast),
        )
        windows = jnp.asarray(cfg.sliding_windows, dtype=jnp.int32)
        layer_index = jnp.arange(cfg.num_layers, dtype=jnp.int32)
        x, _ = layers(cfg, self.dtype, self.param_dtype, self.attention, packed, name="layers")(
            x, windows, lora or {}, segments, cos, sin, adapter_ids, layer_index, deepstack
        )
        return RMSNorm(cfg.rms_norm_eps, self.dtype, self.param_dtype, name="final_norm")(x)
