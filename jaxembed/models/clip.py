"""Flax CLIP dual encoder: a causal text transformer and a ViT, each with a linear projection.

Both towers are pre-LayerNorm transformers (the same layer body, scanned over
depth like the encoder and decoder families). The module's `__call__` is the
text path and returns the *projected* hidden state of every position, so the
engine's ordinary last-token pooling picks the EOS state — CLIP's tokenizer
ends every text with EOS and pads on the right, which makes "last real
token" and HF's "first EOS" the same position, and projecting before or after
the pick is the same linear map. `encode_image` is the vision path: pixels
[B, 3, H, W] (already resized and normalised) → projected CLS state [B, P].
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
from jaxembed.models.encoder import ACTIVATIONS
from jaxembed.models.partitioning import KERNEL_INIT, ONES, ZEROS, with_axes
from jaxembed.parallel.sharding import constrain

CLIP_FAMILIES = frozenset({"clip"})

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
    def from_hf(cls, hf: Mapping[str, Any]) -> TowerConfig:
        return cls(
            hidden_size=int(hf["hidden_size"]),
            num_layers=int(hf["num_hidden_layers"]),
            num_heads=int(hf["num_attention_heads"]),
            intermediate_size=int(hf["intermediate_size"]),
            layer_norm_eps=float(hf.get("layer_norm_eps", 1e-5)),
            activation=str(hf.get("hidden_act", "quick_gelu")),
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

    def __post_init__(self) -> None:
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

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any]) -> ClipConfig:
        if hf.get("model_type") not in CLIP_FAMILIES:
            raise UnsupportedArchitectureError(f"model_type {hf.get('model_type')!r} is not CLIP")
        try:
            text, vision = hf["text_config"], hf["vision_config"]
            return cls(
                text=TowerConfig.from_hf(text),
                vision=TowerConfig.from_hf(vision),
                vocab_size=int(text["vocab_size"]),
                max_position_embeddings=int(text.get("max_position_embeddings", 77)),
                image_size=int(vision["image_size"]),
                patch_size=int(vision["patch_size"]),
                num_channels=int(vision.get("num_channels", 3)),
                projection_dim=int(hf.get("projection_dim", 512)),
                eos_token_id=int(text.get("eos_token_id", 49407)),
                pad_token_id=int(text.get("pad_token_id", 1) or 0),
            )
        except KeyError as e:
            raise UnsupportedArchitectureError(f"config.json lacks {e.args[0]!r}") from None


def _layer_norm(cfg: TowerConfig, dtype: jnp.dtype, param_dtype: jnp.dtype, name: str):
    return nn.LayerNorm(
        epsilon=cfg.layer_norm_eps,
        dtype=dtype,
        param_dtype=param_dtype,
        scale_init=with_axes(ONES, ("embed",)),
        bias_init=with_axes(ZEROS, ("embed",)),
        name=name,
    )


class _Layer(nn.Module):
    """Pre-LN block: x + attn(ln1(x)); then x + mlp(ln2(x))."""

    config: TowerConfig
    dtype: jnp.dtype
    param_dtype: jnp.dtype

    @nn.compact
    def __call__(self, x_bld: jax.Array, bias_bhqk: jax.Array) -> tuple[jax.Array, None]:
        cfg, dt, pdt = self.config, self.dtype, self.param_dtype
        h_bld = _layer_norm(cfg, dt, pdt, "attention_norm")(x_bld)
        proj = lambda name: nn.DenseGeneral(  # noqa: E731
            (cfg.num_heads, cfg.head_dim),
            dtype=dt,
            param_dtype=pdt,
            kernel_init=with_axes(KERNEL_INIT, ("embed", "heads", "head_dim")),
            bias_init=with_axes(ZEROS, ("heads", "head_dim")),
            name=name,
        )
        heads = ("batch", "length", "heads", "head_dim")
        q, k, v = (constrain(proj(n)(h_bld), heads) for n in ("query", "key", "value"))
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(cfg.head_dim)
        probs = jax.nn.softmax(scores.astype(jnp.float32) + bias_bhqk, axis=-1)
        ctx = constrain(jnp.einsum("bhqk,bkhd->bqhd", probs.astype(dt), v), heads)
        attn_bld = nn.DenseGeneral(
            cfg.hidden_size,
            axis=(-2, -1),
            dtype=dt,
            param_dtype=pdt,
            kernel_init=with_axes(KERNEL_INIT, ("heads", "head_dim", "embed")),
            bias_init=with_axes(ZEROS, ("embed",)),
            name="output",
        )(ctx)
        x_bld = x_bld + attn_bld

        def dense(n: int, axes: tuple[str, str], name: str) -> nn.Dense:
            return nn.Dense(
                n,
                dtype=dt,
                param_dtype=pdt,
                kernel_init=with_axes(KERNEL_INIT, axes),
                bias_init=with_axes(ZEROS, axes[1:]),
                name=name,
            )

        h_bld = _layer_norm(cfg, dt, pdt, "mlp_norm")(x_bld)
        h_blf = dense(cfg.intermediate_size, ("embed", "mlp"), "fc1")(h_bld)
        h_blf = constrain(_CLIP_ACTIVATIONS[cfg.activation](h_blf), ("batch", "length", "mlp"))
        x_bld = x_bld + dense(cfg.hidden_size, ("mlp", "embed"), "fc2")(h_blf)
        return constrain(x_bld, ("batch", "length", "embed")), None


class _Tower(nn.Module):
    """A stack of `_Layer`s compiled once (nn.scan), parameters stacked over `layers`."""

    config: TowerConfig
    dtype: jnp.dtype
    param_dtype: jnp.dtype

    @nn.compact
    def __call__(self, x_bld: jax.Array, bias_bhqk: jax.Array) -> jax.Array:
        layers = nn.scan(
            _Layer,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=(nn.broadcast,),
            length=self.config.num_layers,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )
        x_bld, _ = layers(self.config, self.dtype, self.param_dtype, name="layers")(
            x_bld, bias_bhqk
        )
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


def _projection(n: int, dtype, param_dtype) -> nn.Dense:
    return nn.Dense(
        n,
        use_bias=False,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=with_axes(KERNEL_INIT, ("embed", "projection")),
    )


class _TextTower(nn.Module):
    config: ClipConfig
    dtype: jnp.dtype
    param_dtype: jnp.dtype

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
        # Causal and key-padding masks together, as HF's CLIPTextTransformer applies them.
        causal_qk = jnp.tril(jnp.ones((length, length), dtype=bool))
        allowed = causal_qk[None, None] & attention_mask[:, None, None, :].astype(bool)
        bias = jnp.where(allowed, 0.0, jnp.finfo(jnp.float32).min).astype(jnp.float32)
        x = _Tower(tower, self.dtype, self.param_dtype, name="encoder")(x, bias)
        return _layer_norm(tower, self.dtype, self.param_dtype, "final_norm")(x)


class _VisionTower(nn.Module):
    config: ClipConfig
    dtype: jnp.dtype
    param_dtype: jnp.dtype

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
        cls = self.param(
            "class_embedding", with_axes(ZEROS, ("embed",)), (tower.hidden_size,), self.param_dtype
        )
        x = jnp.concatenate([jnp.broadcast_to(cls.astype(self.dtype), (b, 1, x.shape[-1])), x], 1)
        positions = _embed(
            cfg.num_patches + 1,
            tower.hidden_size,
            "position",
            self.dtype,
            self.param_dtype,
            "position",
        )
        x = x + positions(jnp.arange(cfg.num_patches + 1)[None, :])
        x = _layer_norm(tower, self.dtype, self.param_dtype, "pre_norm")(x)
        x = constrain(x, ("batch", "length", "embed"))
        no_mask = jnp.zeros((1, 1, 1, 1), jnp.float32)
        x = _Tower(tower, self.dtype, self.param_dtype, name="encoder")(x, no_mask)
        return _layer_norm(tower, self.dtype, self.param_dtype, "post_norm")(x[:, 0])


class ClipModel(nn.Module):
    """CLIP: `__call__` = text (projected states per position), `encode_image` = images."""

    config: ClipConfig
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    def setup(self) -> None:
        self.text_model = _TextTower(self.config, self.dtype, self.param_dtype)
        self.vision_model = _VisionTower(self.config, self.dtype, self.param_dtype)
        self.text_projection = _projection(self.config.projection_dim, self.dtype, self.param_dtype)
        self.visual_projection = _projection(
            self.config.projection_dim, self.dtype, self.param_dtype
        )

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
        """Normalised pixels [B, C, H, W] → projected image features [B, P] (not L2-normalised)."""
        return self.visual_projection(self.vision_model(pixels_bchw))
