"""The model card: every fact about a model that the serving path needs, in one frozen place.

A card is read once at load time, either from a jaxembed card JSON (shipped in
`jaxembed/cards/` or written by `jaxembed convert`) or derived from what
sentence-transformers stores beside the weights (`modules.json`,
`1_Pooling/config.json`, `sentence_bert_config.json`,
`config_sentence_transformers.json`). Nothing downstream re-derives pooling or
normalisation from the architecture name.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jaxembed.errors import ModelLoadError
from jaxembed.model_types import (
    CLIP_FAMILIES,
    DECODER_FAMILIES,
    QWEN_VL_FAMILIES,
    SPARSE_STATIC_FAMILY,
    STATIC_FAMILIES,
    canonical_model_type,
)
from jaxembed.static_layout import static_max_length, static_module_dir

# SPLADE's poolings (sentence-transformers' SpladePooling max / sum over log(1 + relu(MLM
# logits))): the model's own head pools, and the "embedding" is one weight per vocabulary entry.
SPLADE_POOLING = ("splade_max", "splade_sum")
# sentence-transformers' SparseStaticEmbedding (an inference-free sparse query side): each
# vocabulary entry present in the text gets its trained weight, whatever its count.
SPARSE_STATIC_POOLING = "sparse_static"
SPARSE_POOLING = (*SPLADE_POOLING, SPARSE_STATIC_POOLING)
SPLADE_ACTIVATIONS = ("relu", "log1p_relu")
POOLING_MODES = ("cls", "mean", "max", "last_token", "mean_sqrt_len", *SPARSE_POOLING)
MODALITIES = ("text", "image", "video")
MAX_VIDEO_FRAMES = 64
DTYPES = ("float32", "bfloat16")
CARD_FILENAME = "card.json"
KINDS = ("embedding", "reranker")
# How a reranker's logits become scores: sigmoid of one logit, softmax over several labels,
# or the logits as they are.
SCORE_ACTIVATIONS = ("sigmoid", "softmax", "identity")
PAIR_TEMPLATE_FIELDS = ("prefix", "body", "suffix", "instruction")
# sentence-transformers Dense activations (torch class names) → the card's names.
_ST_DENSE_ACTIVATIONS = {
    "Identity": "identity",
    "Tanh": "tanh",
    "ReLU": "relu",
    "GELU": "gelu",
    "SiLU": "silu",
    "Sigmoid": "sigmoid",
}
PROJECTION_ACTIVATIONS = tuple(_ST_DENSE_ACTIVATIONS.values())
# Qwen3-Reranker's documented prompt (its model card's usage code): the score is
# P("yes") against P("no") for the next token after `suffix`.
QWEN3_RERANKER_TEMPLATE = {
    "prefix": (
        "<|im_start|>system\nJudge whether the Document meets the requirements based on the "
        'Query and the Instruct provided. Note that the answer can only be "yes" or "no".'
        "<|im_end|>\n<|im_start|>user\n"
    ),
    "body": "<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {document}",
    "suffix": "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n",
    "instruction": "Given a web search query, retrieve relevant passages that answer the query",
}
QWEN3_RERANKER_SCORE_TOKENS = ("yes", "no")

# sentence-transformers' pooling flags, in the order it prefers them when several are set.
_ST_POOLING_FLAGS = (
    ("pooling_mode_cls_token", "cls"),
    ("pooling_mode_lasttoken", "last_token"),
    ("pooling_mode_max_tokens", "max"),
    ("pooling_mode_mean_sqrt_len_tokens", "mean_sqrt_len"),
    ("pooling_mode_mean_tokens", "mean"),
)


@dataclasses.dataclass(frozen=True)
class ModelCard:
    """What a model is and how its embeddings are made.

    Attributes:
      name: the canonical short name, also the default served name.
      family: the Hugging Face `model_type` (bert, roberta, xlm-roberta, ...).
      pooling: one of POOLING_MODES.
      normalize: L2-normalise the pooled vector (sentence-transformers' Normalize module).
      max_length: most tokens per input, special tokens included.
      dimensions: width of the embedding.
      prompts: named prefixes, e.g. {"query": "Represent this sentence ...: "}.
      matryoshka_dims: widths the model was trained to be truncated to; empty
        means any width 1..dimensions is accepted.
      served_names: extra names clients may send as `model`.
      source: the Hugging Face repository id the weights come from.
      package: a Python package that carries the weights in `<package>/model`.
      dtype: default compute/storage dtype for this model.
      append_eos: add the EOS token to every input (last-token pooled decoders).
      modalities: what inputs the model embeds ("text", "image", "video").
      causal: decoder attention is causal (False: bidirectional, as gte-Qwen2 uses it).
      instruction_template: how a per-request instruction becomes a query prefix,
        e.g. "Instruct: {instruction}\nQuery: ".
      pad_to_max_length: every text is padded with the pad token to `max_length` and the
        pads are attended to, as the model was trained (SigLIP); usage counts them.
      video_frames: frames sampled uniformly from a video (a request may ask for another count).
      fusion_weights: how an item with several modalities (text + image) becomes one
        vector: the weighted sum of each part's L2-normalised embedding, normalised again.
        Missing modalities weigh 1 (empty = the plain normalised sum).
      architecture: the model's Hugging Face `config.json` fields that define its shapes,
        so that `jaxembed plan` can compile its buckets without the weights (shipped cards).
      kind: "embedding", or "reranker": the model scores (query, document) pairs and
        `dimensions` is its number of labels (models/heads.py).
      activation: a reranker's logits → scores, one of SCORE_ACTIVATIONS ("" = sigmoid for
        one label, softmax for several).
      pair_template: how a reranker reads a pair: `prefix` + `body` (with {instruction},
        {query}, {document}) + `suffix`, and the default `instruction`; empty = the
        tokenizer's own pair encoding (`[CLS] q [SEP] d [SEP]`, `<s> q </s></s> d </s>`).
      score_tokens: an LM-head reranker's (positive, negative) tokens, e.g. ("yes", "no").
      projections: sentence-transformers Dense modules applied after pooling, in order:
        {"path", "in_features", "out_features", "bias", "activation"} (EmbeddingGemma's
        768→3072→768); `dimensions` is the last one's `out_features`.
      tasks: task LoRA adapters built into the checkpoint, in its order (jina-embeddings-v3:
        retrieval.query, retrieval.passage, separation, classification, text-matching); a
        request picks one with `model: "<name>:<task>"`, `task` or its input type, and the
        task's prompt (in `prompts`, under the task's name) is prefixed as the model's own
        `encode(task=...)` does. Without a task the base weights run.
      task_for_input_type: which task an input type selects, e.g. {"query": "retrieval.query"}.
      vl_template: how a vision-language embedder (GME-Qwen2-VL, Qwen3-VL-Embedding) reads
        an item, as its published code does: `prefix` (with {instruction}), the `video` and
        `image` blocks put before the item's text, `suffix`, the default `instruction`
        (documents always get it; a query may bring its own), the position scheme
        (`sequential` or `mrope`), the image pre-resize bounds and the video sampling
        (engine/vl_recipe.py `VLRecipe` lists every key).
      special_tokens: the tokenizer's special tokens frame each text (False: the text's own
        tokens only, as sentence-transformers tokenises for a StaticEmbedding model).
      splade_activation: a SPLADE model's `relu` (log(1 + relu(x))) or `log1p_relu` (log1p
        once more, OpenSearch's models); its `pooling` is splade_max or splade_sum and its
        `dimensions` the vocabulary size.
    """

    name: str
    family: str
    pooling: str
    normalize: bool
    max_length: int
    dimensions: int
    prompts: Mapping[str, str] = dataclasses.field(default_factory=dict)
    default_prompt_name: str | None = None
    similarity_fn_name: str = "cosine"
    matryoshka_dims: tuple[int, ...] = ()
    served_names: tuple[str, ...] = ()
    source: str = ""
    package: str = ""
    dtype: str = "float32"
    append_eos: bool = False
    modalities: tuple[str, ...] = ("text",)
    causal: bool = True
    instruction_template: str = ""
    pad_to_max_length: bool = False
    video_frames: int = 8
    fusion_weights: Mapping[str, float] = dataclasses.field(default_factory=dict)
    architecture: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    kind: str = "embedding"
    activation: str = ""
    pair_template: Mapping[str, str] = dataclasses.field(default_factory=dict)
    score_tokens: tuple[str, ...] = ()
    projections: tuple[Mapping[str, Any], ...] = ()
    tasks: tuple[str, ...] = ()
    task_for_input_type: Mapping[str, str] = dataclasses.field(default_factory=dict)
    splade_activation: str = "relu"
    special_tokens: bool = True
    vl_template: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.pooling not in POOLING_MODES:
            raise ModelLoadError(
                f"card {self.name!r}: pooling {self.pooling!r} is not one of {POOLING_MODES}"
            )
        if self.dtype not in DTYPES:
            raise ModelLoadError(f"card {self.name!r}: dtype {self.dtype!r} is not one of {DTYPES}")
        if self.max_length < 2 or self.dimensions < 1:
            raise ModelLoadError(f"card {self.name!r}: max_length and dimensions must be positive")
        if self.default_prompt_name is not None and self.default_prompt_name not in self.prompts:
            raise ModelLoadError(
                f"card {self.name!r}: default_prompt_name {self.default_prompt_name!r} is not "
                f"one of its prompts ({sorted(self.prompts) or 'none'})"
            )
        if self.similarity_fn_name not in SIMILARITY_FUNCTIONS:
            raise ModelLoadError(
                f"card {self.name!r}: similarity_fn_name must be one of {SIMILARITY_FUNCTIONS}"
            )
        if self.instruction_template and "{instruction}" not in self.instruction_template:
            raise ModelLoadError(
                f"card {self.name!r}: instruction_template lacks '{{instruction}}'"
            )
        bad = [d for d in self.matryoshka_dims if not 1 <= d <= self.dimensions]
        if bad:
            raise ModelLoadError(
                f"card {self.name!r}: matryoshka dims {bad} are outside 1..{self.dimensions}"
            )
        unknown = sorted(set(self.modalities) - set(MODALITIES))
        if unknown or "text" not in self.modalities:
            raise ModelLoadError(
                f"card {self.name!r}: modalities must include 'text' and be among {MODALITIES}"
            )
        if not 1 <= self.video_frames <= MAX_VIDEO_FRAMES:
            raise ModelLoadError(
                f"card {self.name!r}: video_frames must be within 1..{MAX_VIDEO_FRAMES}"
            )
        bad_fusion = {
            m: w
            for m, w in self.fusion_weights.items()
            if m not in self.modalities or not isinstance(w, int | float) or w < 0
        }
        if bad_fusion:
            raise ModelLoadError(
                f"card {self.name!r}: fusion_weights {bad_fusion} must be non-negative weights "
                "of the card's modalities"
            )
        self._check_reranker_fields()
        if self.splade_activation not in SPLADE_ACTIVATIONS:
            raise ModelLoadError(
                f"card {self.name!r}: splade_activation must be one of {SPLADE_ACTIVATIONS}"
            )
        # Freeze the containers so a card can be shared across threads without copies.
        object.__setattr__(self, "prompts", dict(self.prompts))
        object.__setattr__(self, "fusion_weights", dict(self.fusion_weights))
        object.__setattr__(self, "architecture", dict(self.architecture))
        object.__setattr__(self, "matryoshka_dims", tuple(self.matryoshka_dims))
        object.__setattr__(self, "served_names", tuple(self.served_names))
        object.__setattr__(self, "modalities", tuple(self.modalities))
        object.__setattr__(self, "pair_template", dict(self.pair_template))
        object.__setattr__(self, "score_tokens", tuple(self.score_tokens))
        object.__setattr__(self, "projections", tuple(dict(p) for p in self.projections))
        self._check_projections()
        object.__setattr__(self, "tasks", tuple(self.tasks))
        object.__setattr__(self, "vl_template", dict(self.vl_template))
        object.__setattr__(self, "task_for_input_type", dict(self.task_for_input_type))
        stray = sorted(set(self.task_for_input_type.values()) - set(self.tasks))
        if stray:
            raise ModelLoadError(
                f"card {self.name!r}: task_for_input_type names unknown tasks {stray}"
            )

    def _check_projections(self) -> None:
        width = None
        for p in self.projections:
            missing = {"path", "in_features", "out_features", "bias", "activation"} - set(p)
            if missing or p["activation"] not in PROJECTION_ACTIVATIONS:
                raise ModelLoadError(
                    f"card {self.name!r}: projection {p} needs path, in_features, out_features, "
                    f"bias and an activation among {PROJECTION_ACTIVATIONS}"
                )
            if width is not None and p["in_features"] != width:
                raise ModelLoadError(f"card {self.name!r}: projection widths do not chain")
            width = p["out_features"]
        if width is not None and width != self.dimensions:
            raise ModelLoadError(
                f"card {self.name!r}: dimensions {self.dimensions} != the last projection's {width}"
            )

    def _check_reranker_fields(self) -> None:
        if self.kind not in KINDS:
            raise ModelLoadError(f"card {self.name!r}: kind {self.kind!r} is not one of {KINDS}")
        if self.activation and self.activation not in SCORE_ACTIVATIONS:
            raise ModelLoadError(
                f"card {self.name!r}: activation {self.activation!r} is not one of "
                f"{SCORE_ACTIVATIONS}"
            )
        template = self.pair_template
        unknown = sorted(set(template) - set(PAIR_TEMPLATE_FIELDS))
        if unknown:
            raise ModelLoadError(f"card {self.name!r}: unknown pair_template fields {unknown}")
        body = template.get("body", "{query}{document}")
        if template and not ("{query}" in body and "{document}" in body):
            raise ModelLoadError(
                f"card {self.name!r}: pair_template body needs {{query}} and {{document}}"
            )
        if self.score_tokens and len(self.score_tokens) != 2:
            raise ModelLoadError(
                f"card {self.name!r}: score_tokens are two tokens (positive, negative)"
            )

    @property
    def score_activation(self) -> str:
        """How this reranker's logits become scores (the card's, or by label count)."""
        return self.activation or ("sigmoid" if self.dimensions == 1 else "softmax")

    @property
    def sparse(self) -> bool:
        """A SPLADE or sparse-static model: its vectors are vocabulary weights, served sparse."""
        return self.pooling in SPARSE_POOLING

    @property
    def names(self) -> tuple[str, ...]:
        """Every name this model answers to, canonical name first, without repeats."""
        return tuple(dict.fromkeys((self.name, *self.served_names)))

    def allows_dimensions(self, dims: int) -> bool:
        if not 1 <= dims <= self.dimensions:
            return False
        return not self.matryoshka_dims or dims in self.matryoshka_dims or dims == self.dimensions

    def fusion_weight(self, modality: str) -> float:
        return float(self.fusion_weights.get(modality, 1.0))

    def replace(self, **changes: Any) -> ModelCard:
        return dataclasses.replace(self, **changes)

    # -- serialisation -------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["matryoshka_dims"] = list(self.matryoshka_dims)
        out["served_names"] = list(self.served_names)
        out["modalities"] = list(self.modalities)
        out["fusion_weights"] = dict(self.fusion_weights)
        out["architecture"] = dict(self.architecture)
        out["pair_template"] = dict(self.pair_template)
        out["score_tokens"] = list(self.score_tokens)
        out["projections"] = [dict(p) for p in self.projections]
        out["tasks"] = list(self.tasks)
        out["vl_template"] = dict(self.vl_template)
        out["task_for_input_type"] = dict(self.task_for_input_type)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any], *, origin: str = "card") -> ModelCard:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelLoadError(f"{origin}: unknown card fields {unknown}")
        try:
            return cls(**data)
        except TypeError as e:  # a required field is missing
            raise ModelLoadError(f"{origin}: {e}") from None

    @classmethod
    def load(cls, path: str | Path) -> ModelCard:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ModelLoadError(f"no model card at {path}") from None
        except json.JSONDecodeError as e:
            raise ModelLoadError(f"model card {path} is not valid JSON: {e}") from None
        return cls.from_json(data, origin=str(path))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2) + "\n")


def _read_json(path: Path) -> dict[str, Any] | list[Any] | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"{path.name} is not valid JSON: {e}") from None


def card_from_model_dir(
    model_dir: str | Path, hf_config: Mapping[str, Any], *, modules: list | None = None
) -> ModelCard:
    """Derive a card from a Hugging Face / sentence-transformers directory.

    Without sentence-transformers files the model is treated as a plain HF
    encoder: mean pooling, no normalisation (what sentence-transformers itself
    does for a bare transformers checkpoint). `modules`: the `modules.json` entries to use
    instead of the directory's (one route of a Router model: jaxembed/routes.py).
    """
    model_dir = Path(model_dir)
    family = canonical_model_type(hf_config)
    if family in CLIP_FAMILIES:
        return _clip_card(model_dir, hf_config)
    if family in QWEN_VL_FAMILIES:
        return _qwen_vl_card(model_dir, hf_config)
    if is_sequence_classifier(hf_config) or (
        family in DECODER_FAMILIES and "reranker" in model_dir.resolve().name.lower()
    ):
        return _reranker_card(model_dir, hf_config)
    if modules is None:
        modules = _read_json(model_dir / "modules.json") or []
    module_types = [str(m.get("type", "")) for m in modules if isinstance(m, dict)]
    if family == SPARSE_STATIC_FAMILY:
        return _sparse_static_card(model_dir, hf_config)
    if family in STATIC_FAMILIES:
        return _static_card(model_dir, hf_config, modules, module_types)
    if any(t.endswith("SpladePooling") for t in module_types) or (
        is_masked_lm(hf_config) and "splade" in model_dir.resolve().name.lower()
    ):
        return _splade_card(model_dir, hf_config, modules)

    _check_module_types(model_dir, module_types)
    is_decoder = family in DECODER_FAMILIES
    # A bare decoder checkpoint has no pooling config; only its last token has seen every token.
    pooling = "last_token" if is_decoder else "mean"
    pooling_dir = next(
        (m.get("path") for m in modules if str(m.get("type", "")).endswith("Pooling")), "1_Pooling"
    )
    pooling_cfg = _read_json(model_dir / str(pooling_dir) / "config.json") or {}
    if pooling_cfg.get("include_prompt") is False:
        raise ModelLoadError(
            f"{model_dir}: its Pooling module leaves the prompt's tokens out of the pooled "
            "vector (include_prompt: false), which jaxembed does not support"
        )
    if pooling_cfg.get("pooling_mode") in POOLING_MODES:  # newer sentence-transformers spelling
        pooling = pooling_cfg["pooling_mode"]
    else:
        for flag, mode in _ST_POOLING_FLAGS:
            if pooling_cfg.get(flag):
                pooling = mode
                break

    tasks, task_prompts = _builtin_tasks(hf_config)
    hidden = int(hf_config.get("hidden_size", 0) or pooling_cfg.get("word_embedding_dimension", 0))
    head = _st_head(model_dir, modules, module_types, hidden)
    head["prompts"] = task_prompts | head["prompts"]
    return ModelCard(
        name=model_dir.resolve().name.lower(),
        family=family,
        pooling=pooling,
        max_length=_max_length(model_dir, hf_config),
        **head,
        tasks=tasks,
        task_for_input_type={k: t for k, t in TASK_INPUT_TYPES.items() if t in tasks},
        source=str(hf_config.get("_name_or_path", "")),
        append_eos=pooling == "last_token",
        dtype="bfloat16" if is_decoder else "float32",
        causal=not bool(hf_config.get("use_bidirectional_attention", False)),
    )


def _st_head(
    model_dir: Path, modules: list, module_types: list[str], hidden: int
) -> dict[str, Any]:
    """What a sentence-transformers model does after its input module, as card fields: its
    Dense modules and normalisation, and its saved prompts and similarity."""
    projections = _dense_modules(model_dir, modules)
    return dict(
        normalize=_normalized_output(module_types),
        dimensions=projections[-1]["out_features"] if projections else hidden,
        projections=projections,
        **st_meta_fields(model_dir),
    )


def st_meta_fields(model_dir: Path) -> dict[str, Any]:
    """The model-wide facts of `config_sentence_transformers.json` as card fields: prompts,
    the default prompt's name and the similarity function."""
    st_meta = _read_json(model_dir / "config_sentence_transformers.json") or {}
    return dict(
        prompts={k: v for k, v in (st_meta.get("prompts") or {}).items() if isinstance(v, str)},
        default_prompt_name=st_meta.get("default_prompt_name") or None,  # checked by the card
        similarity_fn_name=_similarity(st_meta),
    )


def _sparse_static_card(model_dir: Path, hf_config: Mapping[str, Any]) -> ModelCard:
    """sentence-transformers' SparseStaticEmbedding: a weight per vocabulary entry present in
    the text (no special tokens; the tokenizer's `model_max_length`, as its call truncates)."""
    tokenizer_config = _read_json(model_dir / "tokenizer_config.json") or {}
    limit = tokenizer_config.get("model_max_length") if isinstance(tokenizer_config, dict) else None
    return ModelCard(
        name=model_dir.resolve().name.lower(),
        family=SPARSE_STATIC_FAMILY,
        pooling=SPARSE_STATIC_POOLING,
        normalize=False,
        max_length=int(limit) if isinstance(limit, int) and 2 <= limit <= 2**20 else 512,
        dimensions=int(hf_config["vocab_size"]),
        special_tokens=False,
        **st_meta_fields(model_dir),
    )


def _static_card(
    model_dir: Path, hf_config: Mapping[str, Any], modules: list, module_types: list[str]
) -> ModelCard:
    """A sentence-transformers StaticEmbedding model: the mean of its tokens' table rows (no
    special tokens, as its tokenizer is called), then any Dense and Normalize modules."""
    _check_module_types(model_dir, module_types)
    weights_dir = static_module_dir(model_dir) or model_dir
    head = _st_head(model_dir, modules, module_types, int(hf_config["hidden_size"]))
    if head["projections"] and weights_dir != model_dir:
        raise ModelLoadError(
            f"{model_dir}: Dense modules after a StaticEmbedding kept in its own folder "
            f"({weights_dir.name}) are not supported"
        )
    return ModelCard(
        name=model_dir.resolve().name.lower(),
        family=str(hf_config["model_type"]),
        pooling="mean",
        max_length=static_max_length(weights_dir),
        special_tokens=False,
        **head,
    )


# sentence-transformers' similarity functions (SimilarityFunction), under their saved names.
SIMILARITY_FUNCTIONS = ("cosine", "dot", "euclidean", "manhattan")


def _similarity(st_meta: Mapping[str, Any]) -> str:
    """The similarity the model was trained for (`similarity_fn_name`; cosine when unsaved;
    an unknown name is refused by the card)."""
    name = st_meta.get("similarity_fn_name") or "cosine"
    return "dot" if name == "dot_product" else name  # DOT_PRODUCT's value in older versions


# The sentence-transformers modules an embedder's card describes (by class name: the module
# paths moved between versions, e.g. sentence_transformers.models.Pooling in 2.x-5.x and
# sentence_transformers.sentence_transformer.modules.pooling.Pooling in 6.x).
ST_EMBEDDER_MODULES = ("Transformer", "StaticEmbedding", "Pooling", "Dense", "Normalize")


def _check_module_types(model_dir: Path, module_types: list[str]) -> None:
    """Every module of `modules.json` is one the card describes; anything else (a custom
    module, a Router, an LSTM) would be skipped silently, so it is a load error."""
    unknown = [t for t in module_types if t.rsplit(".", 1)[-1] not in ST_EMBEDDER_MODULES]
    if unknown:
        raise ModelLoadError(
            f"{model_dir}: modules.json lists module(s) jaxembed cannot run: "
            f"{', '.join(unknown)} (supported: {', '.join(ST_EMBEDDER_MODULES)})"
        )


# jina-embeddings-v3's tasks by the input types that clients send (OpenAI, Cohere, TEI).
TASK_INPUT_TYPES = {
    "query": "retrieval.query",
    "document": "retrieval.passage",
    "classification": "classification",
    "clustering": "separation",
}


def _builtin_tasks(hf_config: Mapping[str, Any]) -> tuple[tuple[str, ...], dict[str, str]]:
    """(task adapters, their prompts) of a checkpoint that carries its own (jina's
    `lora_adaptations` and `task_instructions`)."""
    tasks = tuple(str(t) for t in hf_config.get("lora_adaptations") or ())
    instructions = hf_config.get("task_instructions") or {}
    return tasks, {t: str(instructions.get(t) or "") for t in tasks}


def _normalized_output(module_types: list[str]) -> bool:
    """Whether the output is L2-normalised: a Normalize after the last Dense module (one
    before a Dense normalises that Dense's input instead: `normalize_input`)."""
    last_dense = max((i for i, t in enumerate(module_types) if t.endswith("Dense")), default=-1)
    return any(t.endswith("Normalize") for t in module_types[last_dense + 1 :])


def _dense_modules(model_dir: Path, modules: list) -> tuple[dict[str, Any], ...]:
    """The Dense modules sentence-transformers applies after pooling (`2_Dense`, `3_Dense`, …)."""
    out = []
    normalized = False  # a Normalize module since the last Dense: this Dense's input is unit
    for module in modules:
        kind = str(module.get("type", "")) if isinstance(module, dict) else ""
        if kind.endswith("Normalize"):
            normalized = True
        if not kind.endswith("Dense"):
            continue
        path = str(module.get("path", ""))
        config = _read_json(model_dir / path / "config.json") or {}
        activation = str(config.get("activation_function", "torch.nn.modules.activation.Tanh"))
        name = activation.rsplit(".", 1)[-1]
        if name not in _ST_DENSE_ACTIVATIONS or "in_features" not in config:
            raise ModelLoadError(
                f"{model_dir}: Dense module {path!r} ({activation}) is not supported "
                f"(activations: {sorted(_ST_DENSE_ACTIVATIONS)})"
            )
        out.append(
            {
                "path": path,
                "in_features": int(config["in_features"]),
                "out_features": int(config["out_features"]),
                "bias": bool(config.get("bias", True)),
                "activation": _ST_DENSE_ACTIVATIONS[name],
                "normalize_input": normalized,
            }
        )
        normalized = False
    return tuple(out)


def _max_length(model_dir: Path, hf_config: Mapping[str, Any]) -> int:
    """sentence-transformers' max_seq_length, within the model's position table.

    Where sentence-transformers finds it: `sentence_bert_config.json`'s `max_seq_length`
    (layouts written by 2.x-5.x), else the tokenizer's own `model_max_length` in
    `tokenizer_config.json` (6.x keeps it only there; every version falls back to it, and
    transformers' "unset" value 1e30 leaves the position table as the limit).
    """
    st_config = _read_json(model_dir / "sentence_bert_config.json") or {}
    max_positions = int(hf_config.get("max_position_embeddings", 512))
    if hf_config.get("model_type") in ("roberta", "xlm-roberta", "camembert"):
        # Their position table reserves padding_idx + 1 slots before the first real position.
        max_positions -= int(hf_config.get("pad_token_id", 1)) + 1
    saved = st_config.get("max_seq_length") if isinstance(st_config, dict) else None
    if not saved:
        tokenizer_config = _read_json(model_dir / "tokenizer_config.json") or {}
        saved = (
            tokenizer_config.get("model_max_length") if isinstance(tokenizer_config, dict) else None
        )
    if isinstance(saved, bool) or not isinstance(saved, int | float) or saved < 1:
        return max_positions
    return min(int(saved), max_positions)


# GME-Qwen2-VL's item format (its gme_inference.py): system instruction, the image block
# before the text, and the assistant turn opened with <|endoftext|>, whose state is pooled.
GME_TEMPLATE = {
    "prefix": "<|im_start|>system\n{instruction}<|im_end|>\n<|im_start|>user\n",
    "image": "<|vision_start|><|image_pad|><|vision_end|>",
    "suffix": "<|im_end|>\n<|im_start|>assistant\n<|endoftext|>",
    "instruction": "You are a helpful assistant.",
    "positions": "sequential",
    "fetch_min_pixels": 4 * 28 * 28,
    "fetch_max_pixels": 16384 * 28 * 28,
    "aspect": "clamp",
    "processor_resize": True,
    "processor_min_pixels": 256 * 28 * 28,
    "processor_max_pixels": 1280 * 28 * 28,
}

GME_QUERY = "Find an image that matches the given text."
QWEN3_VL_QUERY = "Retrieve images or text relevant to the user's query."

# Qwen3-VL-Embedding's (its qwen3_vl_embedding.py with qwen_vl_utils): the chat template's
# system turn (a full stop added to an instruction without end punctuation), video, image
# and text in the user turn, the generation prompt `<|im_start|>assistant\n` whose last
# token is pooled; images pre-resized to 32-px blocks within 4..1800 blocks and given to the
# processor with do_resize=False; video at 1 fps, 4..64 frames, 128..768 blocks a frame;
# transformers' 3-D M-RoPE positions.
QWEN3_VL_EMBEDDING_TEMPLATE = {
    "prefix": "<|im_start|>system\n{instruction}<|im_end|>\n<|im_start|>user\n",
    "image": "<|vision_start|><|image_pad|><|vision_end|>",
    "video": "<|vision_start|><|video_pad|><|vision_end|>",
    "suffix": "<|im_end|>\n<|im_start|>assistant\n",
    "instruction": "Represent the user's input.",
    "punctuate_instruction": True,
    "positions": "mrope",
    "fetch_min_pixels": 4 * 32 * 32,
    "fetch_max_pixels": 1800 * 32 * 32,
    "aspect": "refuse",
    "alpha_on_white": True,
    "processor_resize": False,
    "video_fps": 1.0,
    "video_min_frames": 4,
    "video_max_frames": 64,
    "video_min_pixels": 128 * 32 * 32,
    "video_max_pixels": 768 * 32 * 32,
    "video_total_pixels": 10 * 768 * 32 * 32,
}


def _qwen_vl_card(model_dir: Path, hf_config: Mapping[str, Any]) -> ModelCard:
    """A Qwen2-VL embedder directory: GME's recipe (last token, normalised, its template,
    its 1,800-token limit); a Qwen3-VL one: Qwen3-VL-Embedding's (its 8,192-token limit,
    video too)."""
    text = hf_config.get("text_config") or hf_config
    qwen3 = hf_config["model_type"] == "qwen3_vl"
    return ModelCard(
        name=model_dir.resolve().name.lower(),
        family=str(hf_config["model_type"]),
        pooling="last_token",
        normalize=True,
        max_length=8192 if qwen3 else 1800,
        dimensions=int(text["hidden_size"]),
        modalities=("text", "image", "video") if qwen3 else ("text", "image"),
        vl_template=QWEN3_VL_EMBEDDING_TEMPLATE if qwen3 else GME_TEMPLATE,
        # A query's instruction (input_type "query"), from each model's own usage examples.
        prompts={"query": QWEN3_VL_QUERY if qwen3 else GME_QUERY},
        source=str(hf_config.get("_name_or_path", "")),
    )


def is_masked_lm(hf_config: Mapping[str, Any]) -> bool:
    """A `*ForMaskedLM` checkpoint (what SPLADE models are)."""
    return any(str(a).endswith("ForMaskedLM") for a in hf_config.get("architectures") or [])


def _splade_card(model_dir: Path, hf_config: Mapping[str, Any], modules: list) -> ModelCard:
    """A SPLADE model: sentence-transformers' SparseEncoder files (MLMTransformer +
    SpladePooling with its pooling_strategy and activation_function), or a bare
    `*ForMaskedLM` checkpoint named splade (max over log(1 + relu), SPLADE v2 onwards)."""
    path = next(
        (m.get("path") for m in modules if str(m.get("type", "")).endswith("SpladePooling")),
        "1_SpladePooling",
    )
    pooling_cfg = _read_json(model_dir / str(path) / "config.json") or {}
    strategy = str(pooling_cfg.get("pooling_strategy", "max"))
    if f"splade_{strategy}" not in SPLADE_POOLING:
        raise ModelLoadError(f"SpladePooling strategy {strategy!r} is not max or sum")
    return ModelCard(
        name=model_dir.resolve().name.lower(),
        family=canonical_model_type(hf_config),
        pooling=f"splade_{strategy}",
        splade_activation=str(pooling_cfg.get("activation_function", "relu")),
        normalize=False,
        max_length=_max_length(model_dir, hf_config),
        dimensions=int(hf_config["vocab_size"]),
        **st_meta_fields(model_dir),
        source=str(hf_config.get("_name_or_path", "")),
    )


def is_sequence_classifier(hf_config: Mapping[str, Any]) -> bool:
    """A `*ForSequenceClassification` checkpoint (a cross-encoder), from its config alone."""
    architectures = hf_config.get("architectures") or []
    return any(str(a).endswith("ForSequenceClassification") for a in architectures)


def num_labels(hf_config: Mapping[str, Any]) -> int:
    """Outputs of a classification head, as transformers counts them."""
    return len(hf_config.get("id2label") or {}) or int(hf_config.get("num_labels", 1))


# sentence-transformers' CrossEncoder activation (class path) → the card's activation.
_ST_ACTIVATIONS = {"Sigmoid": "sigmoid", "Identity": "identity", "Softmax": "softmax"}


def _cross_encoder_activation(model_dir: Path, hf_config: Mapping[str, Any]) -> str:
    """What a CrossEncoder saved as its activation (v5+: config_sentence_transformers.json;
    v3-4: config.json's `sentence_transformers`), or "" for the default by label count."""
    meta = _read_json(model_dir / "config_sentence_transformers.json") or {}
    saved = meta.get("activation_fn") or (hf_config.get("sentence_transformers") or {}).get(
        "activation_fn"
    )
    if not saved:
        return ""
    name = str(saved).rsplit(".", 1)[-1]
    if name not in _ST_ACTIVATIONS:
        raise ModelLoadError(
            f"{model_dir}: the CrossEncoder activation {saved!r} is not supported "
            f"({sorted(_ST_ACTIVATIONS)})"
        )
    return _ST_ACTIVATIONS[name]


def _reranker_card(model_dir: Path, hf_config: Mapping[str, Any]) -> ModelCard:
    """A cross-encoder (`*ForSequenceClassification`: the classifier reads the first token)
    or an LM-head reranker in Qwen3-Reranker's format (last token, yes/no logits)."""
    family = str(hf_config["model_type"])
    common = dict(
        name=model_dir.resolve().name.lower(),
        family=family,
        normalize=False,
        max_length=_max_length(model_dir, hf_config),
        source=str(hf_config.get("_name_or_path", "")),
        kind="reranker",
    )
    if is_sequence_classifier(hf_config):
        return ModelCard(
            **common,
            pooling="cls",
            dimensions=num_labels(hf_config),
            activation=_cross_encoder_activation(model_dir, hf_config),
        )
    return ModelCard(
        **common,
        pooling="last_token",
        dimensions=1,
        dtype="bfloat16",
        pair_template=QWEN3_RERANKER_TEMPLATE,
        score_tokens=QWEN3_RERANKER_SCORE_TOKENS,
    )


def _clip_card(model_dir: Path, hf_config: Mapping[str, Any]) -> ModelCard:
    """CLIP / SigLIP: normalised text and image embeddings in one space.

    CLIP pools the EOS token (the tokenizer ends every text with it); SigLIP
    pools the last of the full `max_length` positions of a padded text.
    """
    from jaxembed.models.clip import ClipConfig  # the model's shapes (the module's own config)

    config = ClipConfig.from_hf(hf_config)
    return ModelCard(
        name=model_dir.resolve().name.lower(),
        family=str(hf_config["model_type"]),
        pooling="last_token",
        normalize=True,
        max_length=config.max_position_embeddings,
        dimensions=config.projection_dim,
        source=str(hf_config.get("_name_or_path", "")),
        modalities=("text", "image", "video"),
        pad_to_max_length=config.siglip,
    )
