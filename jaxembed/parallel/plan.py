"""Deployment plan from abstract shapes: parameters and bytes per device on a mesh, nothing allocated.

Answers "does e5-mistral-7b fit a v5e-8 at bf16, and how is it split?" on a
laptop: the parameter tree comes from `jax.eval_shape`, each leaf's sharding
from the same logical-axis rules the server uses, and the per-device shard
shape from that sharding on an `AbstractMesh` (no devices needed).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import numpy as np
from jax.sharding import AbstractMesh

from jaxembed.families import Family
from jaxembed.parallel.sharding import DATA_AXIS, MODEL_AXIS, param_shardings


@dataclasses.dataclass(frozen=True)
class LeafPlan:
    path: str
    shape: tuple[int, ...]
    spec: tuple[str | None, ...]
    shard_shape: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class ParameterPlan:
    data: int
    model: int
    dtype: str
    leaves: tuple[LeafPlan, ...]

    @property
    def parameters(self) -> int:
        return sum(math.prod(leaf.shape) for leaf in self.leaves)

    @property
    def itemsize(self) -> int:
        return np.dtype(self.dtype).itemsize

    @property
    def total_bytes(self) -> int:
        return self.parameters * self.itemsize

    @property
    def per_device_bytes(self) -> int:
        """Parameter bytes on each device (every device holds one shard of every leaf)."""
        return sum(math.prod(leaf.shard_shape) for leaf in self.leaves) * self.itemsize

    @property
    def replicated_parameters(self) -> int:
        """Parameters no mesh axis splits (norms, and tables the `model` axis does not divide)."""
        return sum(math.prod(leaf.shape) for leaf in self.leaves if not any(leaf.spec))

    def to_dict(self) -> dict[str, Any]:
        return {
            "mesh": {DATA_AXIS: self.data, MODEL_AXIS: self.model},
            "dtype": self.dtype,
            "parameters": self.parameters,
            "replicated_parameters": self.replicated_parameters,
            "total_bytes": self.total_bytes,
            "per_device_bytes": self.per_device_bytes,
            "leaves": [dataclasses.asdict(leaf) for leaf in self.leaves],
        }

    def render(self) -> str:
        gib = 2**30
        lines = [
            f"mesh data={self.data},model={self.model} ({self.data * self.model} devices), "
            f"{self.dtype}",
            f"parameters: {self.parameters:,} ({self.total_bytes / gib:.2f} GiB), "
            f"{self.replicated_parameters:,} replicated on every device",
            f"parameter bytes per device: {self.per_device_bytes / gib:.2f} GiB "
            "(activations come on top: see docs/deploy.md)",
            "",
            f"{'parameter':44s} {'shape':>24s}  {'mesh axes':28s} {'per device':>20s}",
        ]
        for leaf in self.leaves:
            spec = ",".join(a or "-" for a in leaf.spec)
            lines.append(
                f"{leaf.path:44s} {'x'.join(map(str, leaf.shape)):>24s}  {spec:28s} "
                f"{'x'.join(map(str, leaf.shard_shape)):>20s}"
            )
        return "\n".join(lines)


def plan_parameters(
    family: Family, config: Any, data: int, model: int, dtype: str
) -> ParameterPlan:
    abstract = family.abstract_params(config, np.dtype(dtype))
    mesh = AbstractMesh((data, model), (DATA_AXIS, MODEL_AXIS))
    shardings = param_shardings(abstract, family.param_axes(config), mesh)
    leaves = []
    for (path, leaf), sharding in zip(
        jax.tree_util.tree_leaves_with_path(abstract), jax.tree.leaves(shardings), strict=True
    ):
        spec = tuple(sharding.spec) + (None,) * (len(leaf.shape) - len(sharding.spec))
        leaves.append(
            LeafPlan(
                path=".".join(str(getattr(k, "key", k)) for k in path),
                shape=tuple(leaf.shape),
                spec=spec,
                shard_shape=tuple(sharding.shard_shape(leaf.shape)),
            )
        )
    return ParameterPlan(data, model, str(np.dtype(dtype)), tuple(leaves))
