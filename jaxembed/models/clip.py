"""Flax CLIP and SigLIP dual encoders: a text transformer and a ViT, each with an output head.

Both towers are pre-LayerNorm transformers (the same layer body, scanned over
depth like the encoder and decoder families). The module's `__call__` is the
text path and returns the *projected* hidden state of every position, so the
engine's ordinary last-token pooling picks the EOS state — CLIP's tokenizer
ends every text with EOS and pads on the right, which makes "last real
token" and HF's "first EOS" the same position, and projecting before or after
the pick is the same linear map. `encode_image` is the vision path: pixels
[B, 3, H, W] (already resized and normalised) → image features [B, P].

SigLIP is the same graph with different choices, kept as data in ClipConfig
(as the encoder family keeps BERT vs RoBERTa): bidirectional text attention
over texts padded to the full 64 positions (the card's `pad_to_max_length`)
whose last position is pooled through a biased linear head; patches with a
bias and without a class token or pre-norm; and attention pooling of all
patches by a learned probe (the "MAP" head) instead of a CLS projection.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxembed.errors import UnsupportedArchitectureError
from jaxembed.model_types import CLIP_FAMILIES
from jaxembed.models.attention import AttentionConfig, AttentionMask
from jaxembed.models.encoder import ACTIVATIONS, SelfAttention
from jaxembed.models.partitioning import KERNEL_INIT, ZEROS, layer_norm, scan_layers, with_axes
from jaxembed.models.partitioning import dense as partitioned_dense
from jaxembed.parallel.sharding import constrain

# CLIP's own activation: x * sigmoid(1.702 x).
_CLIP_ACTIVATIONS = {**ACTIVATIONS, "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x)}


@dataclasses.dataclass(frozen=True)
class TowerConfig:
    """One transformer tower (text or vision) of a CLIP model."""

    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    layer_norm_eps: float
    activation: str

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise UnsupportedArchitectureError(
                f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}"
            )
        if self.activation not in _CLIP_ACTIVATIONS:
            raise UnsupportedArchitectureError(
                f"activation {self.activation!r} is not supported; known: {sorted(_CLIP_ACTIVATIONS)}"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any], default_activation: str = "quick_gelu") -> TowerConfig:
        return cls(
            hidden_size=int(hf["hidden_size"]),
            num_layers=int(hf["num_hidden_layers"]),
            num_heads=int(hf["num_attention_heads"]),
            intermediate_size=int(hf["intermediate_size"]),
            layer_norm_eps=float(hf.get("layer_norm_eps", 1e-5)),
            activation=str(hf.get("hidden_act", default_activation)),
        )


@dataclasses.dataclass(frozen=True)
class ClipConfig:
    text: TowerConfig
    vision: TowerConfig
    vocab_size: int
    max_position_embeddings: int  # text positions (77 for OpenAI CLIP)
    image_size: int
    patch_size: int
    num_channels: int
    projection_dim: int
    eos_token_id: int
    pad_token_id: int
    # CLIP: causal text, bias-free projections, class token + pre-norm. SigLIP: the opposite.
    siglip: bool = False

    def __post_init__(self) -> None:
        if self.siglip and self.projection_dim != self.vision.hidden_size:
            raise UnsupportedArchitectureError(
                f"SigLIP text projection ({self.projection_dim}) and vision width "
                f"({self.vision.hidden_size}) differ: the embeddings would not share a space"
            )
        if self.image_size % self.patch_size:
            raise UnsupportedArchitectureError(
                f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}"
            )

    @property
    def num_layers(self) -> int:
        """The text tower's depth (the default for per-layer weight rules)."""
        return self.text.num_layers

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def image_positions(self) -> int:
        """Sequence length of the vision tower: the patches, plus CLIP's class token."""
        return self.num_patches + (0 if self.siglip else 1)

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any]) -> ClipConfig:
        family = hf.get("model_type")
        if family not in CLIP_FAMILIES:
            raise UnsupportedArchitectureError(f"model_type {family!r} is not CLIP or SigLIP")
        siglip = family == "siglip"
        try:
            text, vision = hf["text_config"], hf["vision_config"]
            activation = "gelu_pytorch_tanh" if siglip else "quick_gelu"
            if siglip and not vision.get("vision_use_head", True):
                raise UnsupportedArchitectureError("SigLIP vision models without a head")
            projection = (
                int(text.get("projection_size") or text["hidden_size"])
                if siglip
                else int(hf.get("projection_dim", 512))
            )
            return cls(
                text=TowerConfig.from_hf(text, activation),
                vision=TowerConfig.from_hf(vision, activation),
                vocab_size=int(text["vocab_size"]),
                max_position_embeddings=int(text.get("max_position_embeddings", 77)),
                image_size=int(vision["image_size"]),
                patch_size=int(vision["patch_size"]),
                num_channels=int(vision.get("num_channels", 3)),
                projection_dim=projection,
                eos_token_id=int(text.get("eos_token_id", 49407)),
                pad_token_id=int(text.get("pad_token_id", 1) or 0),
                siglip=siglip,
            )
        except KeyError as e:
            raise UnsupportedArchitectureError(f"config.json lacks {e.args[0]!r}") from None


def _layer_norm(cfg: TowerConfig, dtype: jnp.dtype, param_dtype: jnp.dtype, name: str):
    return layer_norm(cfg.layer_norm_eps, name, dtype=dtype, param_dtype=param_dtype)


class _Layer(nn.Module):
    """Pre-LN block: x + attn(ln1(x)); then x + mlp(ln2(x))."""

    config: TowerConfig
    dtype: jnp.dtype
    param_dtype: jnp.dtype
    attention: AttentionConfig
    causal: bool

    @nn.compact
    def __call__(self, x_bld: jax.Array, segments_bl: jax.Array | None) -> tuple[jax.Array, None]:
        cfg, dt, pdt = self.config, self.dtype, self.param_dtype
        mask = AttentionMask(segments_bl, causal=self.causal)
        h_bld = _layer_norm(cfg, dt, pdt, "attention_norm")(x_bld)
        x_bld = x_bld + SelfAttention(cfg, dt, pdt, self.attention, name="attention")(h_bld, mask)
        h_bld = _layer_norm(cfg, dt, pdt, "mlp_norm")(x_bld)
        x_bld = x_bld + _Mlp(cfg, dt, pdt, name="mlp")(h_bld)
        return constrain(x_bld, ("batch", "length", "embed")), None


class _Mlp(nn.Module):
    config: TowerConfig
    dtype: jnp.dtype
    param_dtype: jnp.dtype

    @nn.compact
    def __call__(self, x_bld: jax.Array) -> jax.Array:
        cfg = self.config

        def dense(n: int, axes: tuple[str, str], name: str) -> nn.Dense:
            return partitioned_dense(n, axes, name, dtype=self.dtype, param_dtype=self.param_dtype)

        h_blf = dense(cfg.intermediate_size, ("embed", "mlp"), "fc1")(x_bld)
        h_blf = constrain(_CLIP_ACTIVATIONS[cfg.activation](h_blf), ("batch", "length", "mlp"))
        return dense(cfg.hidden_size, ("mlp", "embed"), "fc2")(h_blf)


class _Tower(nn.Module):
    """A stack of `_Layer`s compiled once (nn.scan), parameters stacked over `layers`.

    `segments_bl`: the attention mask (1 = real, 0 = padding), or None (every position real).
    """

    config: TowerConfig
    dtype: jnp.dtype
    param_dtype: jnp.dtype
    attention: AttentionConfig
    causal: bool = False

    @nn.compact
    def __call__(self, x_bld: jax.Array, segments_bl: jax.Array | None) -> jax.Array:
        layers = scan_layers(_Layer, self.config.num_layers, (nn.broadcast,))
        x_bld, _ = layers(
            self.config, self.dtype, self.param_dtype, self.attention, self.causal, name="layers"
        )(x_bld, segments_bl)
        return x_bld


def _embed(n: int, d: int, axis: str, dtype, param_dtype, name: str) -> nn.Embed:
    return nn.Embed(
        n,
        d,
        dtype=dtype,
        param_dtype=param_dtype,
        embedding_init=with_axes(nn.linear.default_embed_init, (axis, "embed")),
        name=name,
    )


class _TextTower(nn.Module):
    config: ClipConfig
    dtype: jnp.dtype
    param_dtype: jnp.dtype
    attention: AttentionConfig

    @nn.compact
    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
        cfg, tower = self.config, self.config.text
        length = input_ids.shape[1]
        x = _embed(
            cfg.vocab_size, tower.hidden_size, "vocab", self.dtype, self.param_dtype, "token"
        )(input_ids)
        positions = _embed(
            cfg.max_position_embeddings,
            tower.hidden_size,
            "position",
            self.dtype,
            self.param_dtype,
            "position",
        )
        x = x + positions(jnp.arange(length)[None, :])
        x = constrain(x, ("batch", "length", "embed"))
        # Key padding, and for CLIP causality too (as HF's text transformers apply them).
        segments = (attention_mask > 0).astype(jnp.int32)
        encoder = _Tower(
            tower, self.dtype, self.param_dtype, self.attention, not cfg.siglip, name="encoder"
        )
        x = encoder(x, segments)
        return _layer_norm(tower, self.dtype, self.param_dtype, "final_norm")(x)


class _VisionTower(nn.Module):
    config: ClipConfig
    dtype: jnp.dtype
    param_dtype: jnp.dtype
    attention: AttentionConfig

    @nn.compact
    def __call__(self, pixels_bchw: jax.Array) -> jax.Array:
        cfg, tower = self.config, self.config.vision
        b, c, h, w = pixels_bchw.shape
        p = cfg.patch_size
        # Non-overlapping patches as one matmul (the stride-p convolution HF uses, without bias).
        patches = pixels_bchw.reshape(b, c, h // p, p, w // p, p).transpose(0, 2, 4, 1, 3, 5)
        patches = patches.reshape(b, (h // p) * (w // p), c, p, p).astype(self.dtype)
        kernel = self.param(
            "patch_kernel",
            with_axes(KERNEL_INIT, ("patch", "patch", "patch", "embed")),
            (c, p, p, tower.hidden_size),
            self.param_dtype,
        )
        x = jnp.einsum("bncij,cijd->bnd", patches, kernel.astype(self.dtype))
        if cfg.siglip:  # SigLIP's patch convolution has a bias and there is no class token
            bias = self.param(
                "patch_bias", with_axes(ZEROS, ("embed",)), (tower.hidden_size,), self.param_dtype
            )
            x = x + bias.astype(self.dtype)
        else:
            cls = self.param(
                "class_embedding",
                with_axes(ZEROS, ("embed",)),
                (tower.hidden_size,),
                self.param_dtype,
            )
            cls_b1d = jnp.broadcast_to(cls.astype(self.dtype), (b, 1, x.shape[-1]))
            x = jnp.concatenate([cls_b1d, x], axis=1)
        positions = _embed(
            cfg.image_positions,
            tower.hidden_size,
            "position",
            self.dtype,
            self.param_dtype,
            "position",
        )
        x = x + positions(jnp.arange(cfg.image_positions)[None, :])
        if not cfg.siglip:
            x = _layer_norm(tower, self.dtype, self.param_dtype, "pre_norm")(x)
        x = constrain(x, ("batch", "length", "embed"))
        x = _Tower(tower, self.dtype, self.param_dtype, self.attention, name="encoder")(x, None)
        if cfg.siglip:  # every patch state, attention-pooled by the head
            return _layer_norm(tower, self.dtype, self.param_dtype, "post_norm")(x)
        return _layer_norm(tower, self.dtype, self.param_dtype, "post_norm")(x[:, 0])


class _AttentionPoolingHead(nn.Module):
    """SigLIP's MAP head: a learned probe attends over all patches, then a residual MLP."""

    config: TowerConfig
    dtype: jnp.dtype
    param_dtype: jnp.dtype

    @nn.compact
    def __call__(self, x_bld: jax.Array) -> jax.Array:
        cfg, dt = self.config, self.dtype
        d, h = cfg.hidden_size, cfg.num_heads
        probe = self.param(
            "probe", with_axes(ZEROS, (None, None, "embed")), (1, 1, d), self.param_dtype
        )
        # torch.nn.MultiheadAttention keeps q, k, v in one [3D, D] projection.
        in_kernel = self.param(
            "in_kernel", with_axes(KERNEL_INIT, ("embed", "qkv")), (d, 3 * d), self.param_dtype
        )
        in_bias = self.param("in_bias", with_axes(ZEROS, ("qkv",)), (3 * d,), self.param_dtype)
        wq, wk, wv = jnp.split(in_kernel.astype(dt), 3, axis=1)
        bq, bk, bv = jnp.split(in_bias.astype(dt), 3)
        b, length, _ = x_bld.shape
        q_hd = (probe[0, 0].astype(dt) @ wq + bq).reshape(h, cfg.head_dim)
        k_blhd = (x_bld @ wk + bk).reshape(b, length, h, cfg.head_dim)
        v_blhd = (x_bld @ wv + bv).reshape(b, length, h, cfg.head_dim)
        scores_bhl = jnp.einsum("hd,blhd->bhl", q_hd, k_blhd) / math.sqrt(cfg.head_dim)
        probs_bhl = jax.nn.softmax(scores_bhl.astype(jnp.float32), axis=-1).astype(dt)
        ctx_bd = jnp.einsum("bhl,blhd->bhd", probs_bhl, v_blhd).reshape(b, d)
        pooled_bd = nn.Dense(
            d,
            dtype=dt,
            param_dtype=self.param_dtype,
            kernel_init=with_axes(KERNEL_INIT, ("embed", "embed_out")),
            bias_init=with_axes(ZEROS, ("embed_out",)),
            name="out",
        )(ctx_bd)
        normed_b1d = _layer_norm(cfg, dt, self.param_dtype, "norm")(pooled_bd)[:, None]
        return pooled_bd + _Mlp(cfg, dt, self.param_dtype, name="mlp")(normed_b1d)[:, 0]


def _projection(config: ClipConfig, dtype, param_dtype, *, bias: bool = False) -> nn.Dense:
    """Into the joint space: CLIP's bias-free projections, SigLIP's biased text head."""
    return nn.Dense(
        config.projection_dim,
        use_bias=bias,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=with_axes(KERNEL_INIT, ("embed", "projection")),
        bias_init=with_axes(ZEROS, ("projection",)),
    )


class ClipModel(nn.Module):
    """CLIP: `__call__` = text (projected states per position), `encode_image` = images."""

    config: ClipConfig
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    attention: AttentionConfig = AttentionConfig("auto")

    def setup(self) -> None:
        cfg, dt, pdt = self.config, self.dtype, self.param_dtype
        self.text_model = _TextTower(cfg, dt, pdt, self.attention)
        self.vision_model = _VisionTower(cfg, dt, pdt, self.attention)
        self.text_projection = _projection(cfg, dt, pdt, bias=cfg.siglip)
        if cfg.siglip:
            self.vision_head = _AttentionPoolingHead(cfg.vision, dt, pdt)
        else:
            self.visual_projection = _projection(cfg, dt, pdt)

    def __call__(
        self, input_ids: jax.Array, attention_mask: jax.Array, lora=None, adapter_ids=None
    ) -> jax.Array:
        """token ids [B, L] + mask → projected states [B, L, P] (pool the last real token)."""
        if lora:
            raise UnsupportedArchitectureError("LoRA adapters are not supported for CLIP models")
        if self.is_initializing():  # one init creates both towers' parameters
            c, s = self.config.num_channels, self.config.image_size
            self.encode_image(jnp.zeros((1, c, s, s), jnp.float32))
        return self.text_projection(self.text_model(input_ids, attention_mask))

    def encode_image(self, pixels_bchw: jax.Array) -> jax.Array:
        """Normalised pixels [B, C, H, W] → image features [B, P] (not L2-normalised)."""
        if self.config.siglip:
            return self.vision_head(self.vision_model(pixels_bchw))
        return self.visual_projection(self.vision_model(pixels_bchw))
