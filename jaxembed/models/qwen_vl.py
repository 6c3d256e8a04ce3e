"""Qwen2-VL as an embedder (GME-Qwen2-VL): the Qwen2 text decoder plus the vision tower whose
merged features replace the decoder's token embeddings at the image placeholder tokens.

GME's published embedding code (`gme_inference.py`) runs the *text decoder* on those
embeddings with no position ids, so every rotary section gets the plain positions 0..L−1:
M-RoPE with identical sections is the 1-D RoPE `Decoder` already computes. Its pooling is
the last token, normalised. Three entry points share one parameter tree (`text/`, `visual/`):
`__call__` (text rows, the engine's usual program), `encode_vision` (patches → features)
and `embed_fused` (token ids with features scattered in → hidden states).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxembed.errors import UnsupportedArchitectureError
from jaxembed.models.attention import AttentionConfig
from jaxembed.models.decoder import Decoder, DecoderConfig
from jaxembed.models.qwen2_vl_vision import QwenVisionConfig, QwenVisionTower

QWEN_VL_FAMILIES = frozenset({"qwen2_vl"})


@dataclasses.dataclass(frozen=True)
class QwenVLConfig:
    text: DecoderConfig
    vision: QwenVisionConfig
    image_token_id: int
    video_token_id: int

    def __getattr__(self, name: str) -> Any:  # the engine reads layers, vocabulary, pad/EOS ids
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.text, name)

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any]) -> QwenVLConfig:
        """transformers 5's nested `text_config`, or Qwen2-VL's original flat text fields."""
        if hf.get("model_type") not in QWEN_VL_FAMILIES:
            raise UnsupportedArchitectureError(
                f"model_type {hf.get('model_type')!r} is not qwen2_vl"
            )
        text = dict(hf.get("text_config") or {k: v for k, v in hf.items() if k != "vision_config"})
        rope = dict(text.get("rope_parameters") or text.get("rope_scaling") or {})
        rope.pop("mrope_section", None)  # sequential positions: every section alike (module doc)
        if rope.get("rope_type", rope.get("type")) == "mrope":
            rope["rope_type"] = "default"
        text |= {"model_type": "qwen2", "rope_parameters": rope, "rope_scaling": None}
        return cls(
            text=DecoderConfig.from_hf(text),
            vision=QwenVisionConfig.from_hf(hf.get("vision_config") or {}),
            image_token_id=int(hf.get("image_token_id", text.get("image_token_id", 151655))),
            video_token_id=int(hf.get("video_token_id", text.get("video_token_id", 151656))),
        )


class QwenVLModel(nn.Module):
    config: QwenVLConfig
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    attention: AttentionConfig = AttentionConfig("auto")

    def setup(self) -> None:
        cfg, dt, pdt = self.config, self.dtype, self.param_dtype
        self.text = Decoder(cfg.text, dtype=dt, param_dtype=pdt, attention=self.attention)
        self.visual = QwenVisionTower(
            cfg.vision, dtype=dt, param_dtype=pdt, attention=self.attention
        )

    def __call__(self, input_ids, attention_mask, lora=None, adapter_ids=None, packed=False):
        """Text rows: the decoder's hidden states [B, L, D]."""
        if self.is_initializing():  # the vision tower's parameters with the decoder's
            n = self.config.vision.merge_size**2
            self.encode_vision(
                jnp.zeros((1, n, self.config.vision.patch_features), jnp.float32),
                jnp.zeros((1, n, 2), jnp.int32),
                jnp.ones((1, n), jnp.int32),
            )
        return self.text(input_ids, attention_mask, lora, adapter_ids, packed)

    def encode_vision(self, patches_bnf, positions_bn2, segments_bn) -> jax.Array:
        """Patches of images / frames → merged features [B, N / merge², D] (qwen2_vl_vision)."""
        return self.visual(patches_bnf, positions_bn2, segments_bn)

    def embed_fused(self, input_ids, attention_mask, features_bld, where_bl) -> jax.Array:
        """Token ids whose placeholder positions (`where`) take `features` → hidden states."""
        return self.text(input_ids, attention_mask, embeds_override=(features_bld, where_bl))
