"""HF tensor names → Flax parameter paths, written as data, one table per family.

A rule names a Flax path, the HF key (with `{layer}` for scanned layers) and
how the tensor is laid out. The layout decides the one transform (a
transpose for torch's [out, in] Linear weights) and the shape the HF tensor
must have, so a wrong checkpoint fails with the tensor's name and both shapes.
"""

from __future__ import annotations

import dataclasses
import enum

from jaxembed.models.clip import ClipConfig, TowerConfig
from jaxembed.models.decoder import DecoderConfig
from jaxembed.models.encoder import EncoderConfig
from jaxembed.models.gemma3 import Gemma3Config
from jaxembed.models.heads import HeadConfig
from jaxembed.models.modernbert import ModernBertConfig
from jaxembed.models.nomic_bert import NomicBertConfig
from jaxembed.models.qwen2_vl_vision import QwenVisionConfig
from jaxembed.models.qwen_vl import QwenVLConfig
from jaxembed.models.static import SparseStaticConfig, StaticConfig


class Layout(enum.Enum):
    COPY = "copy"  # same shape on both sides (embeddings, norms)
    FLAT = "flat"  # HF keeps it flat; Flax splits it (per-head biases)
    IN_KERNEL = "in_kernel"  # torch Linear [out..., in] → Flax [in, out...]
    OUT_KERNEL = "out_kernel"  # torch Linear [out, in...] → Flax [in..., out]
    CONV = "conv"  # torch Conv2d [out, in, kh, kw] → Flax [in, kh, kw, out]


@dataclasses.dataclass(frozen=True)
class ParamRule:
    flax_path: tuple[str, ...]
    hf_key: str  # may contain "{layer}": then the Flax param is stacked over layers
    layout: Layout = Layout.COPY
    # Older checkpoints spell LayerNorm parameters gamma/beta.
    aliases: tuple[str, ...] = ()
    # Depth of the stack a per-layer rule fills, when it differs from the model's
    # `num_layers` (CLIP's text and vision towers).
    num_layers: int | None = None
    # The key is the checkpoint's own name, outside the wrapper prefix (`bert.`, `model.`):
    # task heads such as `classifier.*` and `lm_head.weight` sit beside the wrapped model.
    top_level: bool = False
    # Only these rows of the HF tensor (an LM head's yes/no rows), before the layout.
    rows: tuple[int, ...] = ()
    # The checkpoint's layer number of the stack's first slice (ModernBERT stacks layers
    # 1.. and keeps layer 0, which has no attention norm, on its own).
    layer_offset: int = 0

    @property
    def per_layer(self) -> bool:
        return "{layer}" in self.hf_key


def _norm(flax_prefix: tuple[str, ...], hf_prefix: str) -> list[ParamRule]:
    return [
        ParamRule((*flax_prefix, "scale"), f"{hf_prefix}.weight", aliases=(f"{hf_prefix}.gamma",)),
        ParamRule((*flax_prefix, "bias"), f"{hf_prefix}.bias", aliases=(f"{hf_prefix}.beta",)),
    ]


def _linear(flax_prefix: tuple[str, ...], hf_prefix: str, layout: Layout) -> list[ParamRule]:
    bias_layout = Layout.FLAT if layout is Layout.IN_KERNEL else Layout.COPY
    return [
        ParamRule((*flax_prefix, "kernel"), f"{hf_prefix}.weight", layout),
        ParamRule((*flax_prefix, "bias"), f"{hf_prefix}.bias", bias_layout),
    ]


# BERT's graph under each naming (EncoderConfig.naming): the layer prefix, then every
# projection and norm of a layer.
_ENCODER_NAMES = {
    "bert": {
        "layer": "encoder.layer.{layer}",
        "query": "attention.self.query",
        "key": "attention.self.key",
        "value": "attention.self.value",
        "attention_output": "attention.output.dense",
        "attention_norm": "attention.output.LayerNorm",
        "intermediate": "intermediate.dense",
        "output": "output.dense",
        "output_norm": "output.LayerNorm",
    },
    "distilbert": {
        "layer": "transformer.layer.{layer}",
        "query": "attention.q_lin",
        "key": "attention.k_lin",
        "value": "attention.v_lin",
        "attention_output": "attention.out_lin",
        "attention_norm": "sa_layer_norm",
        "intermediate": "ffn.lin1",
        "output": "ffn.lin2",
        "output_norm": "output_layer_norm",
    },
}


def encoder_rules(config: EncoderConfig) -> list[ParamRule]:
    """The BERT / RoBERTa / XLM-R / DistilBERT table (keys without the `bert.`/`roberta.`/
    `distilbert.` prefix)."""
    names = _ENCODER_NAMES[config.naming]
    rules = [
        ParamRule(("embeddings", "word", "embedding"), "embeddings.word_embeddings.weight"),
        ParamRule(("embeddings", "position", "embedding"), "embeddings.position_embeddings.weight"),
        *_norm(("embeddings", "norm"), "embeddings.LayerNorm"),
    ]
    if config.type_vocab_size:
        rules.append(
            ParamRule(
                ("embeddings", "token_type", "embedding"), "embeddings.token_type_embeddings.weight"
            )
        )
    layer = names["layer"]

    def linear(path: tuple[str, ...], name: str, layout: Layout = Layout.IN_KERNEL):
        return _linear(("layers", *path), f"{layer}.{names[name]}", layout)

    for name in ("query", "key", "value"):
        rules += linear(("attention", name), name)
    rules += linear(("attention", "output"), "attention_output", Layout.OUT_KERNEL)
    rules += _norm(("layers", "attention_norm"), f"{layer}.{names['attention_norm']}")
    rules += linear(("intermediate",), "intermediate")
    rules += linear(("output",), "output")
    rules += _norm(("layers", "output_norm"), f"{layer}.{names['output_norm']}")
    return rules


# HF tensors that belong to task heads or buffers an embedding model never uses.
ENCODER_IGNORED_PREFIXES = (
    "pooler.",
    "cls.",
    "lm_head.",
    "classifier.",
    "qa_outputs.",
    "embeddings.position_ids",
    "vocab_transform.",  # DistilBertForMaskedLM's head
    "vocab_layer_norm.",
    "vocab_projector.",
    "pre_classifier.",
)
# Wrappers such as BertForMaskedLM store the encoder under one of these.
ENCODER_WRAPPER_PREFIXES = ("bert.", "roberta.", "xlm-roberta.", "distilbert.", "model.")


def mlm_head_rules(config: EncoderConfig) -> list[ParamRule]:
    """A masked-LM head beside its encoder (SPLADE, models/sparse.py): the transform and the
    decoder's bias; the decoder's weight is the tied word-embedding table."""
    if config.naming == "distilbert":
        transform, norm, bias = "vocab_transform", "vocab_layer_norm", "vocab_projector.bias"
        aliases: tuple[str, ...] = ()
    else:
        head = "cls.predictions"
        transform, norm, bias = (
            f"{head}.transform.dense",
            f"{head}.transform.LayerNorm",
            f"{head}.bias",
        )
        aliases = (f"{head}.decoder.bias",)
    return _top_level(
        [
            *_linear(("transform",), transform, Layout.IN_KERNEL),
            *_norm(("norm",), norm),
            ParamRule(("decoder_bias",), bias, aliases=aliases),
        ]
    )


def sparse_rules(backbone_rules: list[ParamRule], config: EncoderConfig) -> list[ParamRule]:
    """A SPLADE model's table: its encoder's rules under `backbone/`, then its MLM head's."""
    nested = [dataclasses.replace(r, flax_path=("backbone", *r.flax_path)) for r in backbone_rules]
    return [*nested, *mlm_head_rules(config)]


def decoder_rules(config: DecoderConfig) -> list[ParamRule]:
    """The Mistral / Qwen2 / Qwen3 table (keys without the `model.` prefix)."""
    layer = "layers.{layer}"
    rules = [
        ParamRule(("embed", "embedding"), "embed_tokens.weight"),
        ParamRule(("final_norm", "scale"), "norm.weight"),
        ParamRule(("layers", "input_norm", "scale"), f"{layer}.input_layernorm.weight"),
        ParamRule(
            ("layers", "post_attention_norm", "scale"), f"{layer}.post_attention_layernorm.weight"
        ),
    ]
    for name in ("q", "k", "v"):
        key = f"{layer}.self_attn.{name}_proj"
        rules.append(
            ParamRule(("layers", "attention", name, "kernel"), f"{key}.weight", Layout.IN_KERNEL)
        )
        if config.qkv_bias:
            rules.append(
                ParamRule(("layers", "attention", name, "bias"), f"{key}.bias", Layout.FLAT)
            )
    rules.append(
        ParamRule(
            ("layers", "attention", "o", "kernel"),
            f"{layer}.self_attn.o_proj.weight",
            Layout.OUT_KERNEL,
        )
    )
    if config.output_bias:
        rules.append(
            ParamRule(("layers", "attention", "o", "bias"), f"{layer}.self_attn.o_proj.bias")
        )
    if config.qk_norm:
        for name in ("q", "k"):
            rules.append(
                ParamRule(
                    ("layers", "attention", f"{name}_norm", "scale"),
                    f"{layer}.self_attn.{name}_norm.weight",
                )
            )
    for name in ("gate", "up", "down"):
        rules.append(
            ParamRule(
                ("layers", name, "kernel"), f"{layer}.mlp.{name}_proj.weight", Layout.IN_KERNEL
            )
        )
    return rules


DECODER_IGNORED_PREFIXES = ("lm_head.", "score.", "rotary_emb.")
DECODER_WRAPPER_PREFIXES = ("model.",)


def _clip_tower_rules(
    flax_prefix: tuple[str, ...], hf_prefix: str, tower: TowerConfig
) -> list[ParamRule]:
    layer = f"{hf_prefix}.encoder.layers.{{layer}}"
    flax_layer = (*flax_prefix, "encoder", "layers")
    rules: list[ParamRule] = []
    for name, hf_name in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
        rules += _linear(
            (*flax_layer, "attention", name), f"{layer}.self_attn.{hf_name}", Layout.IN_KERNEL
        )
    rules += _linear(
        (*flax_layer, "attention", "output"), f"{layer}.self_attn.out_proj", Layout.OUT_KERNEL
    )
    rules += _norm((*flax_layer, "attention_norm"), f"{layer}.layer_norm1")
    rules += _norm((*flax_layer, "mlp_norm"), f"{layer}.layer_norm2")
    rules += _mlp((*flax_layer, "mlp"), f"{layer}.mlp")
    return [dataclasses.replace(r, num_layers=tower.num_layers) for r in rules]


def _mlp(flax_prefix: tuple[str, ...], hf_prefix: str) -> list[ParamRule]:
    return [
        *_linear((*flax_prefix, "fc1"), f"{hf_prefix}.fc1", Layout.IN_KERNEL),
        *_linear((*flax_prefix, "fc2"), f"{hf_prefix}.fc2", Layout.IN_KERNEL),
    ]


def clip_rules(config: ClipConfig) -> list[ParamRule]:
    """HF `CLIPModel` / `SiglipModel`: both towers and their heads (not the logit scale/bias)."""
    text, vision = ("text_model",), ("vision_model",)
    rules = [
        ParamRule((*text, "token", "embedding"), "text_model.embeddings.token_embedding.weight"),
        ParamRule(
            (*text, "position", "embedding"), "text_model.embeddings.position_embedding.weight"
        ),
        *_clip_tower_rules(text, "text_model", config.text),
        *_norm((*text, "final_norm"), "text_model.final_layer_norm"),
        ParamRule(
            (*vision, "patch_kernel"), "vision_model.embeddings.patch_embedding.weight", Layout.CONV
        ),
        ParamRule(
            (*vision, "position", "embedding"), "vision_model.embeddings.position_embedding.weight"
        ),
        *_clip_tower_rules(vision, "vision_model", config.vision),
        *_norm((*vision, "post_norm"), "vision_model.post_layernorm"),
    ]
    if not config.siglip:
        return [
            *rules,
            ParamRule((*vision, "class_embedding"), "vision_model.embeddings.class_embedding"),
            *_norm((*vision, "pre_norm"), "vision_model.pre_layrnorm"),  # sic: HF's spelling
            ParamRule(("text_projection", "kernel"), "text_projection.weight", Layout.IN_KERNEL),
            ParamRule(
                ("visual_projection", "kernel"), "visual_projection.weight", Layout.IN_KERNEL
            ),
        ]
    head = "vision_model.head"
    return [
        *rules,
        ParamRule((*vision, "patch_bias"), "vision_model.embeddings.patch_embedding.bias"),
        *_linear(("text_projection",), "text_model.head", Layout.IN_KERNEL),
        ParamRule(("vision_head", "probe"), f"{head}.probe"),
        ParamRule(
            ("vision_head", "in_kernel"), f"{head}.attention.in_proj_weight", Layout.IN_KERNEL
        ),
        ParamRule(("vision_head", "in_bias"), f"{head}.attention.in_proj_bias"),
        *_linear(("vision_head", "out"), f"{head}.attention.out_proj", Layout.IN_KERNEL),
        *_norm(("vision_head", "norm"), f"{head}.layernorm"),
        *_mlp(("vision_head", "mlp"), f"{head}.mlp"),
    ]


CLIP_IGNORED_PREFIXES = (
    "logit_scale",
    "logit_bias",
    "text_model.embeddings.position_ids",
    "vision_model.embeddings.position_ids",
)
CLIP_WRAPPER_PREFIXES: tuple[str, ...] = ()


def _top_level(rules: list[ParamRule]) -> list[ParamRule]:
    return [dataclasses.replace(r, top_level=True) for r in rules]


def head_rules(family: str, head: HeadConfig) -> list[ParamRule]:
    """Where each family's checkpoints keep the scoring head (models/heads.py).

    BERT: the pooler (inside `bert.`) and a top-level `classifier`; RoBERTa / XLM-R:
    `classifier.dense` and `classifier.out_proj`; an LM-head reranker: the (positive,
    negative) rows of `lm_head.weight`, or of the input embeddings when they are tied.
    """
    if head.kind == "projection":  # in each module's own file (SafetensorsCheckpoint.add_module)
        rules = []
        for i, (path, _, bias, *_) in enumerate(head.layers):
            rules += _top_level(_linear(("head", f"dense_{i}"), f"{path}/linear", Layout.IN_KERNEL))
            if not bias:
                rules.pop()
        return rules
    if head.kind == "token_logits":
        return [
            ParamRule(
                ("head", "kernel"),
                "lm_head.weight",
                Layout.IN_KERNEL,
                aliases=("model.embed_tokens.weight",),
                top_level=True,
                rows=head.token_ids,
            )
        ]
    if family == "bert":
        return [
            *_linear(("head", "dense"), "pooler.dense", Layout.IN_KERNEL),
            *_top_level(_linear(("head", "out"), "classifier", Layout.IN_KERNEL)),
        ]
    return _top_level(
        [
            *_linear(("head", "dense"), "classifier.dense", Layout.IN_KERNEL),
            *_linear(("head", "out"), "classifier.out_proj", Layout.IN_KERNEL),
        ]
    )


def scorer_rules(backbone_rules: list[ParamRule], family: str, head: HeadConfig) -> list[ParamRule]:
    """A reranker's table: its backbone's rules under `backbone/`, then its head's."""
    nested = [dataclasses.replace(r, flax_path=("backbone", *r.flax_path)) for r in backbone_rules]
    return [*nested, *head_rules(family, head)]


def modernbert_rules(config: ModernBertConfig) -> list[ParamRule]:
    """ModernBERT (keys without the `model.` prefix of its task wrappers): layer 0 under
    `first` (no attention norm), layers 1.. stacked under `layers`."""

    def norm(flax_prefix: tuple[str, ...], hf_prefix: str) -> list[ParamRule]:
        rules = [ParamRule((*flax_prefix, "scale"), f"{hf_prefix}.weight")]
        if config.norm_bias:
            rules.append(ParamRule((*flax_prefix, "bias"), f"{hf_prefix}.bias"))
        return rules

    def linear(flax_prefix, hf_prefix, layout, bias: bool) -> list[ParamRule]:
        rules = _linear(flax_prefix, hf_prefix, layout)
        return rules if bias else rules[:1]

    def layer(flax: str, hf: str) -> list[ParamRule]:
        return [
            *linear((flax, "qkv"), f"{hf}.attn.Wqkv", Layout.IN_KERNEL, config.attention_bias),
            *linear((flax, "output"), f"{hf}.attn.Wo", Layout.OUT_KERNEL, config.attention_bias),
            *norm((flax, "mlp_norm"), f"{hf}.mlp_norm"),
            *linear((flax, "wi"), f"{hf}.mlp.Wi", Layout.IN_KERNEL, config.mlp_bias),
            *linear((flax, "wo"), f"{hf}.mlp.Wo", Layout.IN_KERNEL, config.mlp_bias),
        ]

    stacked = [
        *norm(("layers", "attention_norm"), "layers.{layer}.attn_norm"),
        *layer("layers", "layers.{layer}"),
    ]
    return [
        ParamRule(("embed", "embedding"), "embeddings.tok_embeddings.weight"),
        *norm(("embed_norm",), "embeddings.norm"),
        *layer("first", "layers.0"),
        *[
            dataclasses.replace(r, layer_offset=1, num_layers=config.num_layers - 1)
            for r in stacked
        ],
        *norm(("final_norm",), "final_norm"),
    ]


# Masked-LM and classification heads of ModernBERT checkpoints; the rotary tables are buffers.
MODERNBERT_IGNORED_PREFIXES = ("head.", "decoder.", "classifier.", "rotary_emb.")
MODERNBERT_WRAPPER_PREFIXES = ("model.",)


def nomic_bert_rules(config: NomicBertConfig) -> list[ParamRule]:
    """NomicBERT under nomic's own tensor names (what transformers 5 saves, too)."""
    layer = "encoder.layers.{layer}"

    def kernel(flax_name: str, hf_name: str, layout: Layout = Layout.IN_KERNEL) -> ParamRule:
        return ParamRule(("layers", flax_name, "kernel"), f"{layer}.{hf_name}.weight", layout)

    return [
        ParamRule(("word", "embedding"), "embeddings.word_embeddings.weight"),
        ParamRule(("token_type", "embedding"), "embeddings.token_type_embeddings.weight"),
        *_norm(("embed_norm",), "emb_ln"),
        kernel("qkv", "attn.Wqkv"),
        kernel("output", "attn.out_proj", Layout.OUT_KERNEL),
        *_norm(("layers", "attention_norm"), f"{layer}.norm1"),
        kernel("up", "mlp.fc11"),
        kernel("gate", "mlp.fc12"),
        kernel("down", "mlp.fc2"),
        *_norm(("layers", "mlp_norm"), f"{layer}.norm2"),
    ]


def jina_v3_rules(config: NomicBertConfig) -> list[ParamRule]:
    """jina-embeddings-v3 under jina's tensor names (transformers 5 saves them too). jina's
    own checkpoints keep each adapted weight as `<name>.parametrizations.weight.original`
    beside its task stacks `<name>.parametrizations.weight.0.lora_A` / `lora_B`."""
    layer = "encoder.layers.{layer}"

    def weight(flax_path: tuple[str, ...], hf: str, layout: Layout = Layout.COPY) -> ParamRule:
        return ParamRule(
            flax_path, f"{hf}.weight", layout, aliases=(f"{hf}.parametrizations.weight.original",)
        )

    def tasks(flax_prefix: tuple[str, ...], hf: str) -> list[ParamRule]:
        if not config.tasks:
            return []
        lora = f"{hf}.parametrizations.weight.0.lora_"
        return [
            ParamRule((*flax_prefix, "a"), lora + "A"),
            ParamRule((*flax_prefix, "b"), lora + "B"),
        ]

    rules = [*_norm(("embed_norm",), "emb_ln")]  # first: it anchors the wrapper prefix
    for name in ("word", "token_type"):
        hf = f"embeddings.{name}_embeddings"
        rules += [weight((name, "embedding"), hf), *tasks((f"{name}_task",), hf)]
    for ours, theirs, layout in (
        ("qkv", "mixer.Wqkv", Layout.IN_KERNEL),
        ("output", "mixer.out_proj", Layout.OUT_KERNEL),
        ("up", "mlp.fc1", Layout.IN_KERNEL),
        ("down", "mlp.fc2", Layout.IN_KERNEL),
    ):
        hf = f"{layer}.{theirs}"
        rules += [
            weight(("layers", ours, "kernel"), hf, layout),
            ParamRule(("layers", ours, "bias"), f"{hf}.bias", Layout.FLAT),
            *tasks(("layers", f"{ours}_task"), hf),
        ]
    return [
        *rules,
        *_norm(("layers", "attention_norm"), f"{layer}.norm1"),
        *_norm(("layers", "mlp_norm"), f"{layer}.norm2"),
    ]


JINA_V3_IGNORED_PREFIXES = ("pooler.", "lm_head.", "classifier.", "qa_outputs.")
JINA_V3_WRAPPER_PREFIXES = ("roberta.", "model.")

NOMIC_IGNORED_PREFIXES = ("pooler.", "cls.", "lm_head.", "classifier.", "embeddings.position_ids")
NOMIC_WRAPPER_PREFIXES = ("nomic_bert.", "bert.", "model.")


def gemma3_rules(config: Gemma3Config) -> list[ParamRule]:
    """Gemma3 text (keys without the `model.` prefix of Gemma3ForCausalLM)."""
    layer = "layers.{layer}"

    def kernel(path: tuple[str, ...], hf: str, layout: Layout = Layout.IN_KERNEL) -> ParamRule:
        return ParamRule(("layers", *path, "kernel"), f"{layer}.{hf}.weight", layout)

    def scale(path: tuple[str, ...], hf: str) -> ParamRule:
        return ParamRule((*path, "scale"), f"{hf}.weight")

    norms = {
        "input_norm": "input_layernorm",
        "post_attention_norm": "post_attention_layernorm",
        "pre_ffw_norm": "pre_feedforward_layernorm",
        "post_ffw_norm": "post_feedforward_layernorm",
    }
    return [
        ParamRule(("embed", "embedding"), "embed_tokens.weight"),
        *[kernel((name,), f"self_attn.{name}_proj") for name in ("q", "k", "v")],
        kernel(("o",), "self_attn.o_proj", Layout.OUT_KERNEL),
        scale(("layers", "q_norm"), f"{layer}.self_attn.q_norm"),
        scale(("layers", "k_norm"), f"{layer}.self_attn.k_norm"),
        *[scale(("layers", ours), f"{layer}.{theirs}") for ours, theirs in norms.items()],
        *[kernel((name,), f"mlp.{name}_proj") for name in ("gate", "up", "down")],
        scale(("final_norm",), "norm"),
    ]


def qwen_vision_rules(config: QwenVisionConfig, prefix: str = "visual") -> list[ParamRule]:
    """The Qwen2-VL / Qwen3-VL vision tower (models/qwen2_vl_vision.py) under `prefix`
    (`visual`, or `model.visual` as transformers 5 names Qwen3-VL's)."""
    qwen3 = config.naming == "qwen3"
    block = f"{prefix}.blocks.{{layer}}"
    fc1, fc2 = ("linear_fc1", "linear_fc2") if qwen3 else ("fc1", "fc2")
    rules = [ParamRule(("patch_kernel",), f"{prefix}.patch_embed.proj.weight")]
    if config.patch_bias:
        rules.append(ParamRule(("patch_bias",), f"{prefix}.patch_embed.proj.bias"))
    if config.position_side:
        rules.append(ParamRule(("position_table",), f"{prefix}.pos_embed.weight"))
    rules += _norm(("blocks", "norm1"), f"{block}.norm1")
    rules += _norm(("blocks", "norm2"), f"{block}.norm2")
    rules += _linear(("blocks", "qkv"), f"{block}.attn.qkv", Layout.IN_KERNEL)
    rules += _linear(("blocks", "proj"), f"{block}.attn.proj", Layout.OUT_KERNEL)
    rules += _linear(("blocks", "fc1"), f"{block}.mlp.{fc1}", Layout.IN_KERNEL)
    rules += _linear(("blocks", "fc2"), f"{block}.mlp.{fc2}", Layout.IN_KERNEL)
    mergers = [("merger", f"{prefix}.merger")] + [
        (f"deepstack_{k}", f"{prefix}.deepstack_merger_list.{k}")
        for k in range(len(config.deepstack))
    ]
    for ours, theirs in mergers:
        norm, first, second = ("norm", fc1, fc2) if qwen3 else ("ln_q", "mlp.0", "mlp.2")
        rules += _norm((f"{ours}_norm",), f"{theirs}.{norm}")
        rules += _linear((f"{ours}_fc1",), f"{theirs}.{first}", Layout.IN_KERNEL)
        rules += _linear((f"{ours}_fc2",), f"{theirs}.{second}", Layout.IN_KERNEL)
    return rules


def qwen_vl_rules(config: QwenVLConfig) -> list[ParamRule]:
    """Qwen2-VL / Qwen3-VL (models/qwen_vl.py): the text decoder's table under `text/` (behind
    a wrapper prefix: Qwen2-VL's `model.`, Qwen3-VL's `model.language_model.`), the vision
    tower's under `visual/` (top-level `visual.*`; Qwen3-VL's `model.visual.*`, or `visual.*`
    as a bare `Qwen3VLModel` saves it)."""
    text = [
        dataclasses.replace(r, flax_path=("text", *r.flax_path)) for r in decoder_rules(config.text)
    ]
    qwen3 = config.vision.naming == "qwen3"
    vision = [
        dataclasses.replace(
            r,
            flax_path=("visual", *r.flax_path),
            aliases=(r.hf_key.removeprefix("model."),) if qwen3 else r.aliases,
        )
        for r in qwen_vision_rules(config.vision, "model.visual" if qwen3 else "visual")
    ]
    return [*text, *_top_level(vision)]


QWEN_VL_IGNORED_PREFIXES = ("lm_head.",)
QWEN_VL_WRAPPER_PREFIXES = ("model.language_model.", "language_model.", "model.")

GEMMA3_IGNORED_PREFIXES = ("lm_head.", "rotary_emb.")
GEMMA3_WRAPPER_PREFIXES = ("model.",)


def static_rules(config: StaticConfig) -> list[ParamRule]:
    """A static embedding's one table: sentence-transformers' `embedding.weight`
    (nn.EmbeddingBag), or model2vec's `embeddings` (a plain table, no token mapping)."""
    del config
    return [ParamRule(("embedding", "embedding"), "embedding.weight", aliases=("embeddings",))]


def sparse_static_rules(config: SparseStaticConfig) -> list[ParamRule]:
    """SparseStaticEmbedding's one weight per vocabulary entry (`weight`, [vocab])."""
    del config
    return [ParamRule(("weight",), "weight")]


# model2vec's optional per-token re-mapping and weights fold into the table before serving
# (sentence-transformers does the same at load); jaxembed refuses them rather than drop them.
STATIC_IGNORED_PREFIXES = ()
STATIC_WRAPPER_PREFIXES = ()
