"""Qwen2-VL and Qwen3-VL as embedders (GME-Qwen2-VL, Qwen3-VL-Embedding): the Qwen2 / Qwen3
text decoder plus the vision tower whose merged features replace the decoder's token
embeddings at the image / video placeholder tokens.

The two differ as data: Qwen3-VL's decoder has q/k norms (the qwen3 family), interleaved
multimodal RoPE sections, and "deep-stack" features from inner vision blocks added to the
hidden states of its first decoder layers at the visual positions. Which positions a model
is run with is its recipe's choice (engine/qwen_vl.py): GME's published code passes none, so
all three rotary sections see 0..L−1 (the 1-D RoPE); Qwen3-VL-Embedding's runs transformers'
3-D `get_rope_index` positions. Three entry points share one parameter tree (`text/`,
`visual/`): `__call__` (text rows, the engine's usual program), `encode_vision` (patches →
features) and `embed_fused` (token ids with the vision tower's output gathered in → hidden
states).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxembed.errors import UnsupportedArchitectureError
from jaxembed.model_types import QWEN_VL_FAMILIES
from jaxembed.models.attention import AttentionConfig
from jaxembed.models.decoder import Decoder, DecoderConfig
from jaxembed.models.qwen2_vl_vision import QwenVisionConfig, QwenVisionTower


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

    @property
    def deepstack_depth(self) -> int:
        return len(self.vision.deepstack)

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any]) -> QwenVLConfig:
        """transformers 5's nested `text_config`, or Qwen2-VL's original flat text fields."""
        family = hf.get("model_type")
        if family not in QWEN_VL_FAMILIES:
            raise UnsupportedArchitectureError(f"model_type {family!r} is not qwen2_vl/qwen3_vl")
        text = dict(hf.get("text_config") or {k: v for k, v in hf.items() if k != "vision_config"})
        rope = dict(text.get("rope_parameters") or text.get("rope_scaling") or {})
        sections = tuple(int(n) for n in rope.pop("mrope_section", None) or ())
        interleaved = bool(rope.pop("mrope_interleaved", family == "qwen3_vl"))
        if rope.get("rope_type", rope.get("type")) == "mrope":
            rope["rope_type"] = "default"
        rope.setdefault("rope_theta", text.get("rope_theta", 10000.0))
        base = "qwen2" if family == "qwen2_vl" else "qwen3"
        text |= {"model_type": base, "rope_parameters": rope, "rope_scaling": None}
        decoder = DecoderConfig.from_hf(text)
        if sections and sum(sections) != decoder.head_dim // 2:
            raise UnsupportedArchitectureError(
                f"mrope_section {list(sections)} does not cover head_dim/2 = {decoder.head_dim // 2}"
            )
        vision_hf = hf.get("vision_config") or {}
        vision = (
            QwenVisionConfig.from_hf(vision_hf)
            if family == "qwen2_vl"
            else QwenVisionConfig.from_qwen3(vision_hf)
        )
        return cls(
            text=dataclasses.replace(
                decoder,
                mrope_sections=sections or (decoder.head_dim // 2, 0, 0),
                mrope_interleaved=interleaved,
            ),
            vision=vision,
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
            taps = (jnp.zeros((1, n, 4), jnp.int32), jnp.full((1, n, 4), 0.25, jnp.float32))
            self.encode_vision(
                jnp.zeros((1, n, self.config.vision.patch_features), jnp.float32),
                jnp.zeros((1, n, 2), jnp.int32),
                jnp.ones((1, n), jnp.int32),
                taps if self.config.vision.position_side else None,
            )
        return self.text(input_ids, attention_mask, lora, adapter_ids, packed)

    def encode_vision(self, patches_bnf, positions_bn2, segments_bn, interpolation=None):
        """Patches of images / frames → merged features [B, N / merge², D], and for Qwen3-VL
        the deep-stack features [K, B, N / merge², D] (models/qwen2_vl_vision.py)."""
        return self.visual(patches_bnf, positions_bn2, segments_bn, interpolation)

    def embed_fused(
        self, input_ids, attention_mask, vision_md, source_bl, positions_3bl=None, deep_kmd=None
    ) -> jax.Array:
        """Token ids → hidden states, the visual positions taking rows of the vision tower's
        flattened output (`source_bl`: that row, −1 for text; gathered here, on the device,
        so the features never travel through the host). `positions_3bl`: M-RoPE positions
        (None: 0..L−1 in every section). `deep_kmd`: Qwen3-VL's deep-stack rows, alike."""
        where = source_bl >= 0
        feats = jnp.take(vision_md, jnp.maximum(source_bl, 0), axis=0)
        return self.text(
            input_ids,
            attention_mask,
            embeds_override=(feats, where),
            positions_override=positions_3bl,
            deepstack=None if deep_kmd is None else (deep_kmd, source_bl),
        )
