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

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def patch_features(self) -> int:
        return self.in_channels * self.temporal_patch_size * self.patch_size**2

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
        return constrain(x_bnd, ("batch", "length", "embed")), None


class QwenVisionTower(nn.Module):
    """patches [B, N, C·T·P·P] + (row, column) positions [B, N, 2] + segments [B, N]
    → merged tokens [B, N / merge², out_dim] (N a multiple of merge², images' patches in the
    processor's block order)."""

    config: QwenVisionConfig
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    attention: AttentionConfig = AttentionConfig("auto")

    @nn.compact
    def __call__(self, patches_bnf, positions_bn2, segments_bn):
        cfg, dt, pdt = self.config, self.dtype, self.param_dtype
        # The Conv3d's weight as transformers stores it: [embed, C, T, P, P].
        kernel = self.param(
            "patch_kernel",
            with_axes(KERNEL_INIT, ("embed", "patch", "patch", "patch", "patch")),
            (
                cfg.embed_dim,
                cfg.in_channels,
                cfg.temporal_patch_size,
                cfg.patch_size,
                cfg.patch_size,
            ),
            pdt,
        )
        x = patches_bnf.astype(dt) @ kernel.reshape(cfg.embed_dim, -1).T.astype(dt)
        x = constrain(x, ("batch", "length", "embed"))
        cos, sin = vision_rope(positions_bn2, cfg.head_dim, cfg.rope_theta)
        blocks = scan_layers(_Block, cfg.depth, (nn.broadcast,) * 3)
        x, _ = blocks(cfg, dt, pdt, self.attention, name="blocks")(x, segments_bn, cos, sin)
        return self._merge(x)

    def _merge(self, x_bnd):
        cfg, dt, pdt = self.config, self.dtype, self.param_dtype
        x = layer_norm(VISION_NORM_EPS, "merger_norm", dtype=dt, param_dtype=pdt)(x_bnd)
        group = cfg.merge_size**2
        x = x.reshape(x.shape[0], x.shape[1] // group, group * cfg.embed_dim)
        width = group * cfg.embed_dim
        x = dense(width, ("embed", "embed_out"), "merger_fc1", dtype=dt, param_dtype=pdt)(x)
        x = jax.nn.gelu(x, approximate=False)
        return dense(cfg.out_dim, ("embed", "embed_out"), "merger_fc2", dtype=dt, param_dtype=pdt)(
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
