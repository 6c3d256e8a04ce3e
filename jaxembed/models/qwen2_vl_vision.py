"""Flax Qwen2-VL vision tower: patches of any number of images and video frames → merged tokens.

As transformers' `Qwen2VisionTransformerPretrainedModel`: a linear patch embedding (its
Conv3d with kernel = stride is exactly a matmul over the flattened [C, T, P, P] patch),
pre-norm blocks (LayerNorm 1e-6, fused biased qkv, 2-D rotary positions — the row and the
column of each patch over half the head each — biased MLP with quick-GELU), then the
patch merger: LayerNorm, every `merge_size`² consecutive patches concatenated, Linear →
GELU → Linear into the language model's width.

Static shapes for XLA: a batch row holds the patches of one or more images / frames,
padded to a bucket; `segments` numbers each image (each temporal slice of a video) 1, 2, …
(0 = padding), and attention stays within a segment, as transformers' `cu_seqlens` does.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxembed.errors import UnsupportedArchitectureError
from jaxembed.models.attention import AttentionConfig, AttentionMask, attention
from jaxembed.models.decoder import apply_rope
from jaxembed.models.encoder import ACTIVATIONS
from jaxembed.models.partitioning import (
    KERNEL_INIT,
    ZEROS,
    dense,
    layer_norm,
    projection,
    scan_layers,
    with_axes,
)
from jaxembed.parallel.sharding import constrain

_ACTIVATIONS = {**ACTIVATIONS, "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x)}
VISION_NORM_EPS = 1e-6  # fixed in Qwen2-VL's code


@dataclasses.dataclass(frozen=True)
class QwenVisionConfig:
    depth: int
    embed_dim: int
    out_dim: int  # the language model's hidden size
    num_heads: int
    mlp_dim: int
    patch_size: int
    temporal_patch_size: int
    in_channels: int
    merge_size: int
    activation: str
    rope_theta: float
    # Qwen3-VL: a biased patch embedding, a learned square position table resampled to each
    # image's grid (side x side entries), and deep-stack mergers after these blocks.
    patch_bias: bool = False
    position_side: int = 0
    deepstack: tuple[int, ...] = ()
    naming: str = "qwen2"  # whose tensor names (weights/maps.py qwen_vision_rules)

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def patch_features(self) -> int:
        return self.in_channels * self.temporal_patch_size * self.patch_size**2

    @classmethod
    def from_qwen3(cls, hf: Mapping[str, Any]) -> QwenVisionConfig:
        """From a Qwen3-VL `vision_config` (its own names: hidden_size is the tower's width)."""
        activation = str(hf.get("hidden_act", "gelu_pytorch_tanh"))
        if activation not in _ACTIVATIONS:
            raise UnsupportedArchitectureError(f"vision activation {activation!r} is not supported")
        side = math.isqrt(int(hf.get("num_position_embeddings", 2304)))
        return cls(
            depth=int(hf.get("depth", 27)),
            embed_dim=int(hf.get("hidden_size", 1152)),
            out_dim=int(hf.get("out_hidden_size", 3584)),
            num_heads=int(hf.get("num_heads", 16)),
            mlp_dim=int(hf.get("intermediate_size", 4304)),
            patch_size=int(hf.get("patch_size", 16)),
            temporal_patch_size=int(hf.get("temporal_patch_size", 2)),
            in_channels=int(hf.get("in_channels", 3)),
            merge_size=int(hf.get("spatial_merge_size", 2)),
            activation=activation,
            rope_theta=float((hf.get("rope_parameters") or {}).get("rope_theta", 10000.0)),
            patch_bias=True,
            position_side=side,
            deepstack=tuple(int(i) for i in hf.get("deepstack_visual_indexes") or ()),
            naming="qwen3",
        )

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any]) -> QwenVisionConfig:
        """From a Qwen2-VL `vision_config`."""
        activation = str(hf.get("hidden_act", "quick_gelu"))
        if activation not in _ACTIVATIONS:
            raise UnsupportedArchitectureError(f"vision activation {activation!r} is not supported")
        embed = int(hf.get("embed_dim", 1280))
        rope = hf.get("rope_parameters") or {}
        return cls(
            depth=int(hf.get("depth", 32)),
            embed_dim=embed,
            out_dim=int(hf.get("hidden_size", 3584)),
            num_heads=int(hf.get("num_heads", 16)),
            mlp_dim=int(embed * float(hf.get("mlp_ratio", 4))),
            patch_size=int(hf.get("patch_size", 14)),
            temporal_patch_size=int(hf.get("temporal_patch_size", 2)),
            in_channels=int(hf.get("in_channels", 3)),
            merge_size=int(hf.get("spatial_merge_size", 2)),
            activation=activation,
            rope_theta=float(rope.get("rope_theta", 10000.0)),
        )


def vision_rope(positions_bn2: jax.Array, head_dim: int, theta: float):
    """cos/sin [B, N, head_dim] of 2-D axial rotary positions: the row's angles over the first
    quarter of frequencies, the column's over the next, the halves repeated (HF's layout)."""
    quarter = head_dim // 4
    inv_freq = 1.0 / (
        theta ** (jnp.arange(0, head_dim // 2, 2, dtype=jnp.float32) / (head_dim // 2))
    )
    angles = positions_bn2.astype(jnp.float32)[..., None] * inv_freq[:quarter]  # [B, N, 2, Dh/4]
    half = angles.reshape(*angles.shape[:2], -1)  # [h freqs, w freqs]
    full = jnp.concatenate([half, half], axis=-1)
    return jnp.cos(full), jnp.sin(full)


class _Block(nn.Module):
    config: QwenVisionConfig
    dtype: jnp.dtype
    param_dtype: jnp.dtype
    attention: AttentionConfig
    collect: bool = False  # also return each block's output (deep-stack taps)

    @nn.compact
    def __call__(self, x_bnd, segments_bn, cos, sin):
        cfg, dt, pdt = self.config, self.dtype, self.param_dtype
        norm = lambda name: layer_norm(VISION_NORM_EPS, name, dtype=dt, param_dtype=pdt)  # noqa: E731
        h = norm("norm1")(x_bnd)
        axes = ("embed", "qkv", "heads", "head_dim")
        qkv = projection(
            (3, cfg.num_heads, cfg.head_dim), axes, "qkv", dtype=dt, param_dtype=pdt, bias=True
        )(h)
        heads = ("batch", "length", "heads", "head_dim")
        q, k, v = (constrain(qkv[:, :, i], heads) for i in range(3))
        q = apply_rope(q.astype(jnp.float32), cos, sin).astype(dt)
        k = apply_rope(k.astype(jnp.float32), cos, sin).astype(dt)
        mask = AttentionMask(segments_bn, packed=True)
        ctx = constrain(attention(q, k, v, mask, self.attention), heads)
        out = projection(
            cfg.embed_dim, ("heads", "head_dim", "embed"), "proj", dtype=dt, param_dtype=pdt,
            bias=True, axis=(-2, -1),
        )(ctx)  # fmt: skip
        x_bnd = x_bnd + out
        h = dense(cfg.mlp_dim, ("embed", "mlp"), "fc1", dtype=dt, param_dtype=pdt)(
            norm("norm2")(x_bnd)
        )
        h = constrain(_ACTIVATIONS[cfg.activation](h), ("batch", "length", "mlp"))
        x_bnd = x_bnd + dense(cfg.embed_dim, ("mlp", "embed"), "fc2", dtype=dt, param_dtype=pdt)(h)
        x_bnd = constrain(x_bnd, ("batch", "length", "embed"))
        return x_bnd, (x_bnd if self.collect else None)


class QwenVisionTower(nn.Module):
    """patches [B, N, C·T·P·P] + (row, column) positions [B, N, 2] + segments [B, N]
    → merged tokens [B, N / merge², out_dim] (N a multiple of merge², images' patches in the
    processor's block order)."""

    config: QwenVisionConfig
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    attention: AttentionConfig = AttentionConfig("auto")

    @nn.compact
    def __call__(self, patches_bnf, positions_bn2, segments_bn, interpolation=None):
        """`interpolation`: (indices [B, N, 4], weights [B, N, 4]) into the learned position
        table (Qwen3-VL, `position_interpolation`). Returns the merged tokens, and with
        deep-stack layers also their merged features [layers, B, N / merge², out_dim]."""
        cfg, dt, pdt = self.config, self.dtype, self.param_dtype
        # The Conv3d's weight as transformers stores it: [embed, C, T, P, P].
        shape = (
            cfg.embed_dim,
            cfg.in_channels,
            cfg.temporal_patch_size,
            cfg.patch_size,
            cfg.patch_size,
        )
        kernel = self.param(
            "patch_kernel", with_axes(KERNEL_INIT, ("embed", *["patch"] * 4)), shape, pdt
        )
        x = patches_bnf.astype(dt) @ kernel.reshape(cfg.embed_dim, -1).T.astype(dt)
        if cfg.patch_bias:
            x = x + self.param("patch_bias", with_axes(ZEROS, ("embed",)), (cfg.embed_dim,), pdt)
        if cfg.position_side:
            x = x + self._positions(*interpolation).astype(dt)
        x = constrain(x, ("batch", "length", "embed"))
        cos, sin = vision_rope(positions_bn2, cfg.head_dim, cfg.rope_theta)
        blocks = scan_layers(_Block, cfg.depth, (nn.broadcast,) * 3)
        collect = bool(cfg.deepstack)
        x, taps = blocks(cfg, dt, pdt, self.attention, collect, name="blocks")(
            x, segments_bn, cos, sin
        )
        merged = self._merge(x, "merger", post_shuffle=False)
        if not collect:
            return merged
        stacked = [
            self._merge(taps[i], f"deepstack_{k}", True) for k, i in enumerate(cfg.deepstack)
        ]
        return merged, jnp.stack(stacked)

    def _positions(self, indices_bn4, weights_bn4):
        """The learned square table resampled to each patch (bilinear taps computed on the host)."""
        cfg = self.config
        table = self.param(
            "position_table",
            with_axes(nn.linear.default_embed_init, ("position", "embed")),
            (cfg.position_side**2, cfg.embed_dim),
            self.param_dtype,
        )
        taps = jnp.take(table.astype(jnp.float32), indices_bn4, axis=0)  # [B, N, 4, D]
        return jnp.sum(taps * weights_bn4[..., None].astype(jnp.float32), axis=2)

    def _merge(self, x_bnd, name: str, post_shuffle: bool):
        """LayerNorm (before — or, for deep-stack mergers, after — concatenating each merge²
        group), Linear, GELU, Linear into the decoder's width."""
        cfg, dt, pdt = self.config, self.dtype, self.param_dtype
        group = cfg.merge_size**2
        width = group * cfg.embed_dim
        norm = layer_norm(VISION_NORM_EPS, f"{name}_norm", dtype=dt, param_dtype=pdt)
        x = x_bnd if post_shuffle else norm(x_bnd)
        x = x.reshape(x.shape[0], x.shape[1] // group, width)
        x = norm(x) if post_shuffle else x
        x = dense(width, ("embed", "embed_out"), f"{name}_fc1", dtype=dt, param_dtype=pdt)(x)
        x = jax.nn.gelu(x, approximate=False)
        return dense(cfg.out_dim, ("embed", "embed_out"), f"{name}_fc2", dtype=dt, param_dtype=pdt)(
            x
        )


def vision_positions(
    grids_thw: Sequence[tuple[int, int, int]], merge_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """(row, column) of every patch [N, 2] and its attention segment [N] (1, 2, …: each image,
    and each temporal slice of a video, on its own), in the processor's block order."""
    positions, segments, segment = [], [], 0
    for t, h, w in grids_thw:
        rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        shape = (h // merge_size, merge_size, w // merge_size, merge_size)
        block = [a.reshape(shape).transpose(0, 2, 1, 3).reshape(-1) for a in (rows, cols)]
        for _ in range(t):
            segment += 1
            positions.append(np.stack(block, axis=-1))
            segments.append(np.full(h * w, segment))
    return np.concatenate(positions).astype(np.int32), np.concatenate(segments).astype(np.int32)


def position_interpolation(
    grids_thw: Sequence[tuple[int, int, int]], merge_size: int, side: int
) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear taps (indices [N, 4] into the side x side table, weights [N, 4]) resampling
    Qwen3-VL's learned positions to each patch, as `F.interpolate(align_corners=True)` on the
    table does (transformers' `get_vision_interpolation_indices_and_weights`), block order."""
    indices, weights = [], []
    for t, h, w in grids_thw:
        rows, cols = vision_positions([(1, h, w)], merge_size)[0].T
        row_taps, row_weights = _axis_taps(rows, h, side)
        col_taps, col_weights = _axis_taps(cols, w, side)
        idx = (row_taps[:, :, None] * side + col_taps[:, None, :]).reshape(-1, 4)
        wts = (row_weights[:, :, None] * col_weights[:, None, :]).reshape(-1, 4)
        indices += [idx] * t
        weights += [wts] * t
    return np.concatenate(indices).astype(np.int32), np.concatenate(weights).astype(np.float32)


def _axis_taps(index: np.ndarray, size: int, side: int) -> tuple[np.ndarray, np.ndarray]:
    source = index.astype(np.float32) * np.float32(side - 1) / np.float32(max(size - 1, 1))
    floor = np.floor(source)
    offsets = np.arange(2)
    taps = np.clip(floor.astype(np.int64)[:, None] + offsets, 0, side - 1)
    weights = np.clip(1 - np.abs(source[:, None] - floor[:, None] - offsets), 0, None)
    return taps, weights.astype(np.float32)
