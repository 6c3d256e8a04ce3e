"""Task LoRA adapters that ship inside a checkpoint (jina-embeddings-v3's five tasks).

jina's `XLMRobertaLoRA` registers one low-rank pair per task on every Linear and
Embedding of the model and keeps them in the checkpoint as stacks with a task axis:
a Linear's `lora_A` is [tasks, r, in] and `lora_B` [tasks, out, r] (weight += B @ A),
an Embedding's `lora_A` is [tasks, rows, r] and `lora_B` [tasks, r, features]
(table += A @ B), both scaled by `alpha / r`. They are model parameters here, in the
checkpoint's own layout, so conversion, sharding and `jaxembed plan` cover them.

Each row of a batch picks its task with `task_ids` (0 = no adapter, i + 1 = task i):
the delta of the row's own task is added, so rows of several tasks — and rows of
none — share one compiled batch: a Linear's stacks, with a zero slot in front, go through
the PEFT adapters' own gathered matmul (models/lora_delta.py).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxembed.models.lora_delta import lora_delta
from jaxembed.models.partitioning import ZEROS, with_axes


def _with_base_slot(stack: jax.Array) -> jax.Array:
    """A task stack with a zero slot 0 in front (the rows without a task)."""
    return jnp.concatenate([jnp.zeros_like(stack[:1]), stack])


def _task_rows(task_ids: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(index into the task axis, 1.0 for rows with a task / 0.0 for rows without) per row."""
    return jnp.maximum(task_ids - 1, 0), (task_ids > 0)


class TaskLinearLora(nn.Module):
    """The per-row task delta of one Linear: x [B, L, in] → [B, L, out] (zero without a task).

    Replicated: rank × (in + out) per task is small next to the projection it adapts."""

    tasks: int
    rank: int
    features_in: int
    features_out: int
    scaling: float
    param_dtype: jnp.dtype

    @nn.compact
    def __call__(self, x_bli: jax.Array, task_ids: jax.Array) -> jax.Array:
        """In x's dtype, through the PEFT path's gathered matmul (models/lora_delta.py)."""
        a = self.param(
            "a",
            with_axes(ZEROS, ("tasks", "lora_rank", "lora_in")),
            (self.tasks, self.rank, self.features_in),
            self.param_dtype,
        )
        b = self.param(
            "b",
            with_axes(ZEROS, ("tasks", "lora_out", "lora_rank")),
            (self.tasks, self.features_out, self.rank),
            self.param_dtype,
        )
        # As PEFT stacks (models/lora_delta.py): [slots, in, r] / [slots, r, out], slot 0 = none.
        a_slots = _with_base_slot(a.transpose(0, 2, 1))
        b_slots = _with_base_slot(b.transpose(0, 2, 1) * jnp.asarray(self.scaling, b.dtype))
        return lora_delta(x_bli, {"task": (a_slots, b_slots)}, "task", task_ids)


class TaskEmbedLora(nn.Module):
    """The per-row task delta of one lookup table: ids [B, L] → [B, L, features]."""

    tasks: int
    rank: int
    rows: int
    features: int
    scaling: float
    row_axis: str
    dtype: jnp.dtype
    param_dtype: jnp.dtype

    @nn.compact
    def __call__(self, ids_bl: jax.Array, task_ids: jax.Array) -> jax.Array:
        a = self.param(
            "a",
            with_axes(ZEROS, ("tasks", self.row_axis, "lora_rank")),
            (self.tasks, self.rows, self.rank),
            self.param_dtype,
        )
        b = self.param(
            "b",
            with_axes(ZEROS, ("tasks", "lora_rank", "embed")),
            (self.tasks, self.rank, self.features),
            self.param_dtype,
        )
        index, active = _task_rows(task_ids)
        low_blr = a[index[:, None], ids_bl].astype(self.dtype)  # each row's own task, its tokens
        b_brd = jnp.take(b, index, axis=0).astype(self.dtype) * jnp.asarray(
            self.scaling, self.dtype
        )
        delta = jnp.einsum("blr,brd->bld", low_blr, b_brd)
        return delta * active[:, None, None].astype(self.dtype)
