"""Which Hugging Face `model_type`s belong to which family of modules: plain data, no JAX, so
that cards can be read (and requests prepared) in processes that never load a model."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

CLIP_FAMILIES = frozenset({"clip", "siglip"})
DECODER_FAMILIES = frozenset({"mistral", "qwen2", "qwen3"})
QWEN_VL_FAMILIES = frozenset({"qwen2_vl", "qwen3_vl"})
# sentence-transformers' StaticEmbedding (no config.json of its own: registry.read_hf_config
# describes one from its weights under this model_type).
STATIC_FAMILIES = frozenset({"static_embedding"})  # static_layout.STATIC_MODEL_TYPE
# sentence-transformers' SparseStaticEmbedding (a Router's inference-free query side).
SPARSE_STATIC_FAMILY = "sparse_static"


def canonical_model_type(hf: Mapping[str, Any]) -> str:
    """The family a config belongs to: its `model_type`, except jina's original
    jina-embeddings-v3 config, which says `xlm-roberta` but has rotary positions."""
    model_type = str(hf.get("model_type"))
    if model_type == "xlm-roberta" and hf.get("position_embedding_type") == "rotary":
        return "jina_embeddings_v3"
    return model_type
