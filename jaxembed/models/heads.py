"""Scoring heads: a backbone's pooled vector → relevance logits, for rerankers.

A reranker is the same backbone an embedder runs (models/encoder.py,
models/decoder.py) and the same pooling, followed by a small head that turns
the pooled vector into `num_labels` logits. The engine treats those logits as
a `num_labels`-wide "embedding", so rerankers get buckets, packing, priorities
and caching from the embedding engine unchanged.

Two heads cover the published rerankers:

* `classifier` — `dense → tanh → out` on the first token: BERT's pooler plus
  `classifier` (`BertForSequenceClassification`) and RoBERTa / XLM-R's
  `classifier.dense` + `classifier.out_proj`, the same arithmetic under
  different tensor names (weights/maps.py).
* `token_logits` — an LM-head reranker (Qwen3-Reranker) scores
  `logit(yes) − logit(no)` at the last position: only those two rows of the
  LM head are kept, so the `[tokens, vocab]` logits are never computed.

The head runs in float32 whatever the backbone's dtype: it is tiny, and the
difference of two large logits is where bfloat16 would lose most.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxembed.errors import UnsupportedArchitectureError
from jaxembed.models.attention import AttentionConfig
from jaxembed.models.partitioning import KERNEL_INIT as _kernel_init
from jaxembed.models.partitioning import dense as _dense
from jaxembed.models.partitioning import with_axes as _axes

HEAD_KINDS = ("classifier", "token_logits", "projection")
# Activations of sentence-transformers Dense modules (card.PROJECTION_ACTIVATIONS).
_PROJECTION_ACTIVATIONS = {
    "identity": lambda x: x,
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "silu": jax.nn.silu,
    "sigmoid": jax.nn.sigmoid,
}


@dataclasses.dataclass(frozen=True)
class HeadConfig:
    """`num_labels`: logits the head emits (1 for a relevance score; `token_logits`
    always emits one: positive minus negative). `token_ids`: the LM-head rows
    (positive, negative) a `token_logits` head reads. A `projection` head is an
    embedder's sentence-transformers Dense modules (`layers`), not a scorer."""

    kind: str
    hidden_size: int
    num_labels: int = 1
    token_ids: tuple[int, ...] = ()
    # `projection`: (module path, out_features, bias, activation, normalize_input) per Dense
    # module, in order; normalize_input: a Normalize module comes before this Dense.
    layers: tuple[tuple[str, int, bool, str, bool], ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in HEAD_KINDS:
            raise UnsupportedArchitectureError(f"head {self.kind!r} is not one of {HEAD_KINDS}")
        if self.num_labels < 1:
            raise UnsupportedArchitectureError("a scoring head needs at least one label")
        if self.kind == "token_logits" and (len(self.token_ids) != 2 or self.num_labels != 1):
            raise UnsupportedArchitectureError(
                "a token-logits head reads two LM-head rows (positive, negative) into one score"
            )


@dataclasses.dataclass(frozen=True)
class ScorerConfig:
    """A backbone's config plus its head; reads through to the backbone for everything
    the engine asks of a model config (layers, vocabulary, pad and EOS ids)."""

    backbone: Any
    head: HeadConfig

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.backbone, name)


class ClassifierHead(nn.Module):
    config: HeadConfig
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, pooled: jax.Array) -> jax.Array:
        cfg = self.config

        def dense(n: int, axes: tuple[str, str], name: str) -> nn.Dense:
            return _dense(n, axes, name, dtype=jnp.float32, param_dtype=self.param_dtype)

        hidden = jnp.tanh(dense(cfg.hidden_size, ("embed", "embed_out"), "dense")(pooled))
        return dense(cfg.num_labels, ("embed", "labels"), "out")(hidden)


class TokenLogitsHead(nn.Module):
    config: HeadConfig
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, pooled: jax.Array) -> jax.Array:
        kernel = self.param(
            "kernel",
            _axes(_kernel_init, ("embed", "labels")),
            (self.config.hidden_size, 2),
            self.param_dtype,
        )
        logits = pooled.astype(jnp.float32) @ kernel.astype(jnp.float32)  # [..., (pos, neg)]
        return logits[..., :1] - logits[..., 1:]


class ProjectionHead(nn.Module):
    """sentence-transformers Dense modules after pooling: `activation(x W + b)` each."""

    config: HeadConfig
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, pooled: jax.Array) -> jax.Array:
        x = pooled.astype(jnp.float32)
        for i, (_, features, bias, activation, normalize_input) in enumerate(self.config.layers):
            if normalize_input:  # sentence-transformers' Normalize: F.normalize, eps 1e-12
                x = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
            dense = _dense(
                features,
                ("embed", "embed_out"),
                f"dense_{i}",
                dtype=jnp.float32,
                param_dtype=self.param_dtype,
                bias=bias,
            )
            x = _PROJECTION_ACTIVATIONS[activation](dense(x))
        return x


HEADS: dict[str, type[nn.Module]] = {
    "classifier": ClassifierHead,
    "token_logits": TokenLogitsHead,
    "projection": ProjectionHead,
}


class BackboneWithHead(nn.Module):
    """A family's backbone plus parameters the engine uses after it (a scoring head, Dense
    modules, an MLM head). `__call__` runs the backbone; initialising also creates the head's
    parameters (`_init_head`), so one `init` gives the whole tree. Subclasses build the head
    in `setup` after `super().setup()`."""

    config: Any  # with `.backbone`: the backbone's own config
    backbone_module: Callable[..., nn.Module]
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    attention: AttentionConfig = AttentionConfig("auto")

    def setup(self) -> None:
        self.backbone = self.backbone_module(
            self.config.backbone,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            attention=self.attention,
        )

    def _init_head(self) -> None:
        raise NotImplementedError

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array,
        lora=None,
        adapter_ids=None,
        packed: bool = False,
    ) -> jax.Array:
        hidden_bld = self.backbone(input_ids, attention_mask, lora, adapter_ids, packed)
        if self.is_initializing():
            self._init_head()
        return hidden_bld


class Scorer(BackboneWithHead):
    """A backbone with a head after pooling. `__call__`: the backbone's hidden states
    (pooled by the engine as for embeddings); `score`: pooled vectors [..., D] → the
    head's output (a reranker's logits, or an embedder's projected vectors), float32."""

    config: ScorerConfig

    def setup(self) -> None:
        super().setup()
        self.head = HEADS[self.config.head.kind](self.config.head, self.param_dtype)

    def _init_head(self) -> None:
        self.head(jnp.zeros((1, self.config.head.hidden_size), jnp.float32))

    def score(self, pooled: jax.Array) -> jax.Array:
        return self.head(pooled)
