"""Logical axis names → mesh axes: the one place that decides how arrays are split.

Every parameter is created with logical axis names (`nn.with_logical_partitioning`
in the model modules) and activations are constrained with `constrain`. The
rules below map those names onto the mesh's `data` and `model` axes:
Megatron-style tensor parallelism (attention heads and the MLP's hidden units
over `model`, so q/k/v/gate/up are column-parallel and o/down row-parallel)
and data parallelism of the batch over `data`.

A dimension the mesh axis does not divide is left unsplit (e.g. MiniLM's 12
heads on an 8-way `model` axis, or a single KV head): correctness never
depends on divisibility, only how much is split does.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"
MODEL_AXIS = "model"

Rules = Sequence[tuple[str, str | None]]

LOGICAL_AXIS_RULES: Rules = (
    ("batch", DATA_AXIS),
    ("heads", MODEL_AXIS),
    ("kv_heads", MODEL_AXIS),
    ("mlp", MODEL_AXIS),
    ("vocab", MODEL_AXIS),
    ("embed", None),
    ("length", None),
    ("head_dim", None),
    ("layers", None),
    ("position", None),
    ("token_type", None),
    ("patch", None),  # ViT patch-embedding kernel dims (channels, patch rows, patch columns)
    ("projection", None),  # CLIP's joint embedding space
    ("qkv", None),  # SigLIP's fused attention-pooling projection
    ("embed_out", None),  # a square [embed, embed] kernel's output side
    ("labels", None),  # a scoring head's outputs (models/heads.py)
    ("glu", None),  # a GLU's (input, gate) halves of one fused kernel
    ("tasks", None),  # built-in task adapters (models/task_lora.py)
    ("lora_rank", None),
    ("lora_in", None),
    ("lora_out", None),
)

_ACTIVE: contextvars.ContextVar[tuple[Mesh, Rules] | None] = contextvars.ContextVar(
    "jaxembed_activation_sharding", default=None
)


def mesh_spec(
    logical_axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules: Rules
) -> PartitionSpec:
    """The mesh PartitionSpec for an array of `shape` whose dims carry `logical_axes`.

    A logical name without a rule is a bug (a typo would silently replicate), so
    it raises; a mesh axis that does not divide its dimension, or that an earlier
    dimension already uses, leaves the dimension unsplit.
    """
    table = dict(rules)
    if len(logical_axes) != len(shape):
        raise ValueError(f"{len(logical_axes)} logical axes {logical_axes} for shape {shape}")
    used: set[str] = set()
    spec: list[str | None] = []
    for name, size in zip(logical_axes, shape, strict=True):
        if name is None:
            spec.append(None)
            continue
        if name not in table:
            raise ValueError(f"logical axis {name!r} has no sharding rule")
        axis = table[name]
        if axis is None or axis in used or size % mesh.shape[axis]:
            spec.append(None)
        else:
            used.add(axis)
            spec.append(axis)
    return PartitionSpec(*spec)


def logical_axes(boxed_variables: Any) -> Any:
    """Tree of logical-axis tuples from a tree of `nn.Partitioned` (e.g. abstract init output)."""
    specs = nn.get_partition_spec(boxed_variables)
    return jax.tree.map(tuple, specs, is_leaf=lambda x: isinstance(x, PartitionSpec))


def param_shardings(
    abstract_params: Any, axes: Any, mesh: Mesh, rules: Rules = LOGICAL_AXIS_RULES
) -> Any:
    """A `NamedSharding` per parameter, from its shape and its logical axes."""
    return jax.tree.map(
        lambda leaf, names: NamedSharding(mesh, mesh_spec(names, leaf.shape, mesh, rules)),
        abstract_params,
        axes,
        is_leaf=lambda x: isinstance(x, tuple),
    )


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """[batch, length] inputs: rows split over `data`."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS, None))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules: Rules = LOGICAL_AXIS_RULES) -> Iterator[None]:
    """Within this context, `constrain` pins activations to `mesh` (used while tracing)."""
    token = _ACTIVE.set((mesh, rules))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def active_mesh() -> tuple[Mesh, Rules] | None:
    """The (mesh, rules) of the enclosing `activation_sharding`, or None (tracing unsharded)."""
    return _ACTIVE.get()


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
    """`with_sharding_constraint` by logical names; a no-op outside `activation_sharding`."""
    active = _ACTIVE.get()
    if active is None:
        return x
    mesh, rules = active
    return jax.lax.with_sharding_constraint(
        x, NamedSharding(mesh, mesh_spec(axes, x.shape, mesh, rules))
    )
