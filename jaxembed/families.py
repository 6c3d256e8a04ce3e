"""Architecture families: the single table from HF `model_type` to module, config and weight map.

Adding an architecture means adding one `Family` here; the loader, the
converter and the engine read everything they need from it.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxembed.card import SPLADE_POOLING, is_sequence_classifier, num_labels
from jaxembed.errors import ModelLoadError, UnsupportedArchitectureError
from jaxembed.model_types import (
    CLIP_FAMILIES,
    DECODER_FAMILIES,
    QWEN_VL_FAMILIES,
    SPARSE_STATIC_FAMILY,
    STATIC_FAMILIES,
    canonical_model_type,
)
from jaxembed.models.clip import ClipConfig, ClipModel
from jaxembed.models.decoder import Decoder, DecoderConfig
from jaxembed.models.encoder import ENCODER_FAMILIES, Encoder, EncoderConfig
from jaxembed.models.gemma3 import GEMMA3_FAMILIES, Gemma3Config, Gemma3Text
from jaxembed.models.heads import HeadConfig, Scorer, ScorerConfig
from jaxembed.models.modernbert import MODERNBERT_FAMILIES, ModernBert, ModernBertConfig
from jaxembed.models.nomic_bert import (
    JINA_V3_FAMILIES,
    NOMIC_FAMILIES,
    NomicBert,
    NomicBertConfig,
    jina_v3_config,
)
from jaxembed.models.qwen_vl import QwenVLConfig, QwenVLModel
from jaxembed.models.sparse import SparseConfig, SparseEncoder
from jaxembed.models.static import (
    SparseStatic,
    SparseStaticConfig,
    StaticConfig,
    StaticEmbedding,
)
from jaxembed.parallel.sharding import logical_axes
from jaxembed.weights import maps


@dataclasses.dataclass(frozen=True)
class Family:
    config_from_hf: Callable[[Mapping[str, Any]], Any]
    module: Callable[..., nn.Module]  # (config, dtype=, param_dtype=) -> module
    rules: Callable[[Any], Sequence[maps.ParamRule]]
    ignored_prefixes: tuple[str, ...]
    wrapper_prefixes: tuple[str, ...]
    # The module takes packed rows (`packed=True`: segment ids in the mask argument).
    packable: bool = False

    def _abstract_boxed(self, config: Any, param_dtype: jnp.dtype) -> Any:
        module = self.module(config, param_dtype=param_dtype)
        ids = jax.ShapeDtypeStruct((1, 2), jnp.int32)
        return jax.eval_shape(module.init, jax.random.key(0), ids, ids)["params"]

    def abstract_params(self, config: Any, param_dtype: jnp.dtype) -> Any:
        """Shapes and dtypes of the parameter tree, computed without allocating it."""
        return nn.meta.unbox(self._abstract_boxed(config, param_dtype))

    def param_axes(self, config: Any) -> Any:
        """The logical axis names of every parameter (same tree as `abstract_params`)."""
        return logical_axes(self._abstract_boxed(config, jnp.float32))


_ENCODER = Family(
    config_from_hf=EncoderConfig.from_hf,
    module=Encoder,
    rules=maps.encoder_rules,
    ignored_prefixes=maps.ENCODER_IGNORED_PREFIXES,
    wrapper_prefixes=maps.ENCODER_WRAPPER_PREFIXES,
    packable=True,
)

_DECODER = Family(
    config_from_hf=DecoderConfig.from_hf,
    module=Decoder,
    rules=maps.decoder_rules,
    ignored_prefixes=maps.DECODER_IGNORED_PREFIXES,
    wrapper_prefixes=maps.DECODER_WRAPPER_PREFIXES,
    packable=True,
)

_CLIP = Family(
    config_from_hf=ClipConfig.from_hf,
    module=ClipModel,
    rules=maps.clip_rules,
    ignored_prefixes=maps.CLIP_IGNORED_PREFIXES,
    wrapper_prefixes=maps.CLIP_WRAPPER_PREFIXES,
)

_MODERNBERT = Family(
    config_from_hf=ModernBertConfig.from_hf,
    module=ModernBert,
    rules=maps.modernbert_rules,
    ignored_prefixes=maps.MODERNBERT_IGNORED_PREFIXES,
    wrapper_prefixes=maps.MODERNBERT_WRAPPER_PREFIXES,
    packable=True,
)

_NOMIC = Family(
    config_from_hf=NomicBertConfig.from_hf,
    module=NomicBert,
    rules=maps.nomic_bert_rules,
    ignored_prefixes=maps.NOMIC_IGNORED_PREFIXES,
    wrapper_prefixes=maps.NOMIC_WRAPPER_PREFIXES,
    packable=True,
)

_JINA_V3 = Family(
    config_from_hf=jina_v3_config,
    module=NomicBert,  # the same graph (models/nomic_bert.py)
    rules=maps.jina_v3_rules,
    ignored_prefixes=maps.JINA_V3_IGNORED_PREFIXES,
    wrapper_prefixes=maps.JINA_V3_WRAPPER_PREFIXES,
    packable=True,
)

_QWEN_VL = Family(
    config_from_hf=QwenVLConfig.from_hf,
    module=QwenVLModel,
    rules=maps.qwen_vl_rules,
    ignored_prefixes=maps.QWEN_VL_IGNORED_PREFIXES,
    wrapper_prefixes=maps.QWEN_VL_WRAPPER_PREFIXES,
)

_GEMMA3 = Family(
    config_from_hf=Gemma3Config.from_hf,
    module=Gemma3Text,
    rules=maps.gemma3_rules,
    ignored_prefixes=maps.GEMMA3_IGNORED_PREFIXES,
    wrapper_prefixes=maps.GEMMA3_WRAPPER_PREFIXES,
    packable=True,
)

# One table per token, averaged (sentence-transformers' StaticEmbedding). Not packed: with
# no attention a padded position costs one gathered row, less than pooling packed segments
# (4,000 passages on 2 vCPUs: 5,425 texts/s padded against 4,575 packed).
_STATIC = Family(
    config_from_hf=StaticConfig.from_hf,
    module=StaticEmbedding,
    rules=maps.static_rules,
    ignored_prefixes=maps.STATIC_IGNORED_PREFIXES,
    wrapper_prefixes=maps.STATIC_WRAPPER_PREFIXES,
)

# A weight per vocabulary entry present in the text (a Router's inference-free query side).
_SPARSE_STATIC = Family(
    config_from_hf=SparseStaticConfig.from_hf,
    module=SparseStatic,
    rules=maps.sparse_static_rules,
    ignored_prefixes=(),
    wrapper_prefixes=(),
)

FAMILIES: dict[str, Family] = (
    dict.fromkeys(ENCODER_FAMILIES, _ENCODER)
    | dict.fromkeys(MODERNBERT_FAMILIES, _MODERNBERT)
    | dict.fromkeys(NOMIC_FAMILIES, _NOMIC)
    | dict.fromkeys(JINA_V3_FAMILIES, _JINA_V3)
    | dict.fromkeys(GEMMA3_FAMILIES, _GEMMA3)
    | dict.fromkeys(DECODER_FAMILIES, _DECODER)
    | dict.fromkeys(CLIP_FAMILIES, _CLIP)
    | dict.fromkeys(QWEN_VL_FAMILIES, _QWEN_VL)
    | dict.fromkeys(STATIC_FAMILIES, _STATIC)
    | {SPARSE_STATIC_FAMILY: _SPARSE_STATIC}
)


def get_family(model_type: str) -> Family:
    try:
        return FAMILIES[model_type]
    except KeyError:
        raise UnsupportedArchitectureError(
            f"architecture {model_type!r} is not supported; supported: {sorted(FAMILIES)}"
        ) from None


def _score_token_ids(tokens: Sequence[str], model_dir: Path | None) -> tuple[int, ...]:
    """The vocabulary ids of an LM-head reranker's score tokens (e.g. "yes", "no").

    Without a model directory (`jaxembed plan` from a card) only the head's shape
    matters, and placeholder ids stand in."""
    if model_dir is None:
        return tuple(range(len(tokens)))
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    ids = [tokenizer.token_to_id(t) for t in tokens]
    if None in ids:
        raise ModelLoadError(
            f"the score tokens {list(tokens)} are not all single tokens of {model_dir}'s vocabulary"
        )
    return tuple(int(i) for i in ids)


def _head_config(
    model_type: str, hf_config: Mapping[str, Any], card: Any, model_dir: Path | None
) -> HeadConfig:
    hidden = int(hf_config["hidden_size"])
    if model_type in ENCODER_FAMILIES:
        labels = num_labels(hf_config)
        if card is not None and card.dimensions != labels:
            raise ModelLoadError(
                f"card {card.name!r} says {card.dimensions} scores but the checkpoint's "
                f"classifier has {labels} labels"
            )
        return HeadConfig("classifier", hidden, labels)
    if model_type in DECODER_FAMILIES:
        tokens = card.score_tokens if card is not None else ()
        if len(tokens) != 2:
            raise ModelLoadError(
                f"a {model_type} reranker needs the card's score_tokens (positive, negative)"
            )
        return HeadConfig("token_logits", hidden, 1, _score_token_ids(tokens, model_dir))
    raise UnsupportedArchitectureError(f"{model_type} models cannot be rerankers")


def _projection_head(card: Any) -> HeadConfig:
    layers = tuple(
        (
            p["path"],
            int(p["out_features"]),
            bool(p["bias"]),
            p["activation"],
            bool(p.get("normalize_input", False)),
        )
        for p in card.projections
    )
    return HeadConfig("projection", int(card.projections[0]["in_features"]), layers=layers)


def module_dirs(config: Any) -> list[str]:
    """Subdirectories whose own weight files the model also needs (its Dense modules)."""
    if isinstance(config, ScorerConfig) and config.head.kind == "projection":
        return [path for path, *_ in config.head.layers]
    return []


def _scorer_family(base: Family, model_type: str) -> Family:
    """`base`'s backbone with a scoring head (models/heads.py) under `head/`."""
    return Family(
        config_from_hf=base.config_from_hf,  # the backbone's; model_family adds the head
        module=functools.partial(Scorer, backbone_module=base.module),
        rules=lambda config: maps.scorer_rules(
            list(base.rules(config.backbone)), model_type, config.head
        ),
        ignored_prefixes=base.ignored_prefixes,
        wrapper_prefixes=base.wrapper_prefixes,
        packable=base.packable,
    )


def _sparse_family(base: Family) -> Family:
    """`base`'s backbone with its masked-LM head (models/sparse.py) for SPLADE pooling."""
    return Family(
        config_from_hf=base.config_from_hf,
        module=functools.partial(SparseEncoder, backbone_module=base.module),
        rules=lambda config: maps.sparse_rules(list(base.rules(config.backbone)), config.backbone),
        ignored_prefixes=base.ignored_prefixes,
        wrapper_prefixes=base.wrapper_prefixes,
        packable=False,  # the head pools a whole row; packed rows would mix their sequences
    )


def _sparse_config(model_type: str, hf_config: Mapping[str, Any], config: Any, card: Any):
    if model_type not in ENCODER_FAMILIES:
        raise UnsupportedArchitectureError(
            f"SPLADE needs a BERT-family masked LM (bert, distilbert, roberta); not {model_type}"
        )
    if hf_config.get("tie_word_embeddings") is False:
        raise UnsupportedArchitectureError(
            "this masked LM's decoder is not tied to its word embeddings (not supported)"
        )
    distil = model_type == "distilbert"
    activation = str(hf_config.get("activation" if distil else "hidden_act", "gelu"))
    return SparseConfig(
        config,
        transform_activation=activation,
        head_norm_eps=config.layer_norm_eps,
        strategy=card.pooling.removeprefix("splade_"),
        activation=card.splade_activation,
    )


def model_family(
    hf_config: Mapping[str, Any], card: Any = None, model_dir: Path | None = None
) -> tuple[Family, Any]:
    """The family and config of a model: an embedder's, or — with a head after pooling — a
    reranker's (the card's `kind`, or without a card a `*ForSequenceClassification` config) or
    an embedder with sentence-transformers Dense modules, whose config is a `ScorerConfig`.
    The card also decides causal vs bidirectional attention (gte-Qwen2)."""
    model_type = canonical_model_type(hf_config)
    family = get_family(model_type)
    config = family.config_from_hf(hf_config)
    if card is not None and getattr(config, "causal", card.causal) != card.causal:
        config = dataclasses.replace(config, causal=card.causal)
    if card is not None and card.pooling in SPLADE_POOLING:
        return _sparse_family(family), _sparse_config(model_type, hf_config, config, card)
    reranker = card.kind == "reranker" if card is not None else is_sequence_classifier(hf_config)
    if reranker:
        head = _head_config(model_type, hf_config, card, model_dir)
    elif card is not None and card.projections:
        head = _projection_head(card)
    else:
        return family, config
    return _scorer_family(family, model_type), ScorerConfig(config, head)
