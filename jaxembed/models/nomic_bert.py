"""Flax post-norm BERTs with rotary positions: NomicBERT and jina-embeddings-v3.

NomicBERT (nomic-embed-text-v1 / v1.5), as transformers' `NomicBertModel` (and
nomic's own code, whose tensor names the checkpoints keep): word + token-type
embeddings → LayerNorm (no position table); per layer `x = norm1(x + attn(x))`,
`x = norm2(x + fc2(act(fc12(x)) * fc11(x)))`, with q/k/v from one fused `Wqkv`,
rotary positions over the whole head (non-interleaved halves, base
`rotary_emb_base`), and no projection biases.

jina-embeddings-v3 (transformers' `JinaEmbeddingsV3Model`, jina's XLM-R with RoPE)
is the same graph with biases, a plain `fc2(gelu(fc1(x)))` MLP and its task LoRA
adapters (models/task_lora.py) on every projection and lookup table: the same
module, with `bias`, `gated` and `tasks` in the config.

Both NomicBERT config spellings are read: transformers 5's (`hidden_size`,
`rope_parameters`) and nomic's original GPT-2-style one (`n_embd`, `n_head`,
`rotary_emb_base`, ...); for jina both transformers' `jina_embeddings_v3` config
and jina's original one (`model_type: xlm-roberta`, `position_embedding_type:
rotary`, `lora_adaptations`, ...).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxembed.errors import UnsupportedArchitectureError
from jaxembed.model_types import canonical_model_type
from jaxembed.models.attention import AttentionConfig, AttentionMask, attention
from jaxembed.models.decoder import apply_rope, rope_cos_sin
from jaxembed.models.encoder import ACTIVATIONS
from jaxembed.models.lora_delta import lora_delta
from jaxembed.models.packing import segment_ids, token_positions
from jaxembed.models.partitioning import embedding, layer_norm, projection, scan_layers
from jaxembed.models.task_lora import TaskEmbedLora, TaskLinearLora
from jaxembed.parallel.sharding import constrain

NOMIC_FAMILIES = frozenset({"nomic_bert"})
JINA_V3_FAMILIES = frozenset({"jina_embeddings_v3"})
# nomic's names for the activation of its gated MLP.
_GATED = {"swiglu": "silu", "geglu": "gelu"}


def _first(hf: Mapping[str, Any], *names: str, default: Any = None) -> Any:
    for name in names:
        if hf.get(name) is not None:
            return hf[name]
    if default is None:
        raise UnsupportedArchitectureError(f"config.json lacks {names[0]!r}")
    return default


@dataclasses.dataclass(frozen=True)
class NomicBertConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    layer_norm_eps: float
    activation: str
    rope_theta: float
    token_type_rows: int  # rows of the token-type table (every input has type 0)
    pad_token_id: int
    max_position_embeddings: int
    type_vocab_size: int = 0  # token types are not folded into ids (models/encoder.py)
    bias: bool = False  # q/k/v, output and MLP projections have biases (jina)
    gated: bool = True  # SwiGLU fc11/fc12 (nomic) or a plain fc1 → act → fc2 MLP (jina)
    tasks: tuple[str, ...] = ()  # built-in task LoRA adapters, in the checkpoint's order
    task_rank: int = 0
    task_scaling: float = 1.0  # lora_alpha / lora_rank

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any]) -> NomicBertConfig:
        if hf.get("model_type") not in NOMIC_FAMILIES:
            raise UnsupportedArchitectureError(
                f"model_type {hf.get('model_type')!r} is not nomic_bert"
            )
        for flag in ("qkv_proj_bias", "mlp_fc1_bias", "mlp_fc2_bias", "prenorm", "use_rms_norm"):
            if hf.get(flag):
                raise UnsupportedArchitectureError(f"NomicBERT with {flag}=true is not supported")
        if hf.get("rotary_emb_interleaved") or hf.get("rotary_emb_fraction", 1.0) != 1.0:
            raise UnsupportedArchitectureError(
                "NomicBERT rotary embeddings must cover the whole head, non-interleaved"
            )
        if hf.get("rotary_scaling_factor"):
            raise UnsupportedArchitectureError(
                "rotary_scaling_factor (nomic's dynamic NTK scaling beyond n_positions) is not "
                "supported: it depends on each batch's padded length; leave it unset"
            )
        rope = hf.get("rope_parameters") or {}
        if rope.get("rope_type", "default") != "default":
            raise UnsupportedArchitectureError("only default RoPE is supported for NomicBERT")
        activation = str(_first(hf, "hidden_act", "activation_function", default="silu"))
        activation = _GATED.get(activation, activation)
        if activation not in ACTIVATIONS:
            raise UnsupportedArchitectureError(f"activation {activation!r} is not supported")
        hidden = int(_first(hf, "hidden_size", "n_embd"))
        return cls(
            vocab_size=int(hf["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(_first(hf, "intermediate_size", "n_inner", default=4 * hidden)),
            num_layers=int(_first(hf, "num_hidden_layers", "n_layer")),
            num_heads=int(_first(hf, "num_attention_heads", "n_head")),
            layer_norm_eps=float(_first(hf, "layer_norm_eps", "layer_norm_epsilon", default=1e-12)),
            activation=activation,
            rope_theta=float(rope.get("rope_theta") or hf.get("rotary_emb_base") or 1000.0),
            token_type_rows=int(hf.get("type_vocab_size", 2)),
            pad_token_id=int(hf.get("pad_token_id") or 0),
            max_position_embeddings=int(
                _first(hf, "max_position_embeddings", "n_positions", default=2048)
            ),
        )


# Our projections → the PEFT sites (jaxembed/lora.py) whose deltas make up their outputs.
_PEFT_SITES = {
    "qkv": ("q", "k", "v"),
    "output": ("o",),
    "up": ("up",),
    "gate": ("gate",),
    "down": ("down",),
}


def jina_v3_config(hf: Mapping[str, Any]) -> NomicBertConfig:
    """jina-embeddings-v3 in transformers' spelling or jina's original one (with its tasks)."""
    if canonical_model_type(hf) not in JINA_V3_FAMILIES:
        raise UnsupportedArchitectureError(
            f"model_type {hf.get('model_type')!r} is not jina-embeddings-v3"
        )
    if hf.get("rotary_emb_interleaved"):
        raise UnsupportedArchitectureError("interleaved rotary embeddings are not supported")
    rope = hf.get("rope_parameters") or {}
    if rope.get("rope_type", "default") != "default":
        raise UnsupportedArchitectureError("only default RoPE is supported for jina-v3")
    activation = str(hf.get("hidden_act", "gelu"))
    if activation not in ACTIVATIONS:
        raise UnsupportedArchitectureError(f"activation {activation!r} is not supported")
    tasks = tuple(str(t) for t in hf.get("lora_adaptations") or ())
    rank = int(hf.get("lora_rank", 4)) if tasks else 0
    hidden = int(hf["hidden_size"])
    return NomicBertConfig(
        vocab_size=int(hf["vocab_size"]),
        hidden_size=hidden,
        intermediate_size=int(hf.get("intermediate_size", 4 * hidden)),
        num_layers=int(hf["num_hidden_layers"]),
        num_heads=int(hf["num_attention_heads"]),
        layer_norm_eps=float(hf.get("layer_norm_eps", 1e-5)),
        activation=activation,
        rope_theta=float(rope.get("rope_theta") or hf.get("rotary_emb_base") or 20000.0),
        token_type_rows=int(hf.get("type_vocab_size", 1) or 1),
        pad_token_id=int(hf.get("pad_token_id") or 0),
        max_position_embeddings=int(hf.get("max_position_embeddings", 8194)),
        bias=True,
        gated=False,
        tasks=tasks,
        task_rank=rank,
        task_scaling=float(hf.get("lora_alpha", 1)) / rank if tasks else 1.0,
    )


def _norm(cfg: NomicBertConfig, dtype, param_dtype, name: str) -> nn.LayerNorm:
    return layer_norm(cfg.layer_norm_eps, name, dtype=dtype, param_dtype=param_dtype)


class _Layer(nn.Module):
    config: NomicBertConfig
    dtype: jnp.dtype
    param_dtype: jnp.dtype
    attention: AttentionConfig
    packed: bool

    def _task_delta(self, name: str, x, task_ids, d_in: int, d_out: int):
        """The row's task adapter on projection `name` (None: no tasks, or no task ids)."""
        cfg = self.config
        if not cfg.tasks or (task_ids is None and not self.is_initializing()):
            return None  # (initialisation declares the adapters' parameters all the same)
        if task_ids is None:
            task_ids = jnp.zeros(x.shape[:1], jnp.int32)
        lora = TaskLinearLora(
            len(cfg.tasks), cfg.task_rank, d_in, d_out, cfg.task_scaling,
            param_dtype=self.param_dtype, name=f"{name}_task",
        )  # fmt: skip
        return lora(x, task_ids)

    def _linear(self, name, features, axes, x, rows, d_in: int, **kwargs):
        """A projection of the layer plus its task delta or PEFT LoRA delta (reshaped to the
        projection's output)."""
        dt, pdt = self.dtype, self.param_dtype
        y = projection(
            features, axes, name, dtype=dt, param_dtype=pdt, bias=self.config.bias, **kwargs
        )(x)
        x_bli = x.reshape(*x.shape[:2], -1)
        lora, task_ids = rows
        if lora:  # PEFT adapters (jaxembed/lora.py): models without built-in tasks
            deltas = [lora_delta(x_bli, lora, site, task_ids) for site in _PEFT_SITES[name]]
            if any(delta is None for delta in deltas):
                return y
            return y + jnp.concatenate(deltas, axis=-1).reshape(y.shape).astype(y.dtype)
        delta = self._task_delta(name, x_bli, task_ids, d_in, y[0, 0].size)
        return y if delta is None else y + delta.reshape(y.shape).astype(y.dtype)

    @nn.compact
    def __call__(self, x_bld, lora, segments_bl, cos, sin, task_ids=None):
        """`task_ids`: each row's built-in task, or (with `lora`) its PEFT adapter slot."""
        rows = (lora, task_ids)
        cfg, dt, pdt = self.config, self.dtype, self.param_dtype
        d, f = cfg.hidden_size, cfg.intermediate_size
        axes = ("embed", "qkv", "heads", "head_dim")
        qkv = self._linear("qkv", (3, cfg.num_heads, cfg.head_dim), axes, x_bld, rows, d)
        heads = ("batch", "length", "heads", "head_dim")
        q, k, v = (constrain(qkv[:, :, i], heads) for i in range(3))
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        mask = AttentionMask(segments_bl, packed=self.packed)
        ctx = constrain(attention(q, k, v, mask, self.attention), heads)
        out = self._linear("output", d, ("heads", "head_dim", "embed"), ctx, rows, d, axis=(-2, -1))
        x_bld = _norm(cfg, dt, pdt, "attention_norm")(x_bld + out)
        up = self._linear("up", f, ("embed", "mlp"), x_bld, rows, d)
        if cfg.gated:
            gate = self._linear("gate", f, ("embed", "mlp"), x_bld, rows, d)
            h = ACTIVATIONS[cfg.activation](gate) * up
        else:
            h = ACTIVATIONS[cfg.activation](up)
        h = constrain(h, ("batch", "length", "mlp"))
        down = self._linear("down", d, ("mlp", "embed"), h, rows, f)
        out_bld = _norm(cfg, dt, pdt, "mlp_norm")(x_bld + down)
        return constrain(out_bld, ("batch", "length", "embed")), None


def _embed(cfg: NomicBertConfig, rows: int, axis: str, name: str, ids, task_ids, dt, pdt, init):
    """A lookup table plus the row's task delta on it (jina adapts its tables too)."""
    x = embedding(rows, cfg.hidden_size, axis, name, dtype=dt, param_dtype=pdt)(ids)
    if not cfg.tasks or (task_ids is None and not init):
        return x
    lora = TaskEmbedLora(
        len(cfg.tasks), cfg.task_rank, rows, cfg.hidden_size, cfg.task_scaling, axis,
        dtype=dt, param_dtype=pdt, name=f"{name}_task",
    )  # fmt: skip
    ids_for_tasks = task_ids if task_ids is not None else jnp.zeros(ids.shape[:1], jnp.int32)
    return x + lora(ids, ids_for_tasks).astype(x.dtype)


class NomicBert(nn.Module):
    """token ids [B, L] + attention mask [B, L] → last hidden states [B, L, D]."""

    config: NomicBertConfig
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    attention: AttentionConfig = AttentionConfig("auto")

    @nn.compact
    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array,
        lora=None,
        adapter_ids=None,
        packed: bool = False,
    ) -> jax.Array:
        """`packed`: `attention_mask` holds segment ids; positions restart per sequence.
        `adapter_ids`: each row's built-in task (0 = none, i + 1 = `config.tasks[i]`), or with
        `lora` (PEFT stacks, jaxembed/lora.py; models without built-in tasks) its slot."""
        if lora and self.config.tasks:
            raise UnsupportedArchitectureError(
                "a model with built-in task adapters takes no PEFT adapters"
            )
        cfg, dt, pdt = self.config, self.dtype, self.param_dtype
        init = self.is_initializing()
        x = _embed(cfg, cfg.vocab_size, "vocab", "word", input_ids, adapter_ids, dt, pdt, init)
        types = jnp.zeros_like(input_ids)
        x = x + _embed(
            cfg, cfg.token_type_rows, "token_type", "token_type", types, adapter_ids, dt, pdt, init
        )
        x = constrain(_norm(cfg, dt, pdt, "embed_norm")(x), ("batch", "length", "embed"))
        positions = token_positions(attention_mask, attention_mask if packed else None)
        cos, sin = rope_cos_sin(positions, cfg.head_dim, cfg.rope_theta, 1.0)
        layers = scan_layers(_Layer, cfg.num_layers, (0, *(nn.broadcast,) * 4))
        x, _ = layers(cfg, dt, pdt, self.attention, packed, name="layers")(
            x, lora or {}, segment_ids(attention_mask, packed), cos, sin, adapter_ids
        )
        return x
