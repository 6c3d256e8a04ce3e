"""Parameter count and memory of a model from abstract shapes (`jax.eval_shape`), no allocation.

Used to plan a deployment of a model that does not fit the machine at hand
(a 7B decoder on a laptop): how many bytes per dtype, and per device when the
weights are split over a tensor-parallel `model` axis.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax

_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "int8": 1}


@dataclasses.dataclass(frozen=True)
class ParameterMemory:
    parameters: int
    replicated_parameters: int  # norms: too small to be worth splitting

    @property
    def bytes_per_dtype(self) -> dict[str, int]:
        return {name: self.parameters * size for name, size in _DTYPE_BYTES.items()}

    def per_device_bytes(self, dtype: str, model_parallel: int = 1) -> float:
        """Bytes per device with every non-norm weight split evenly over `model_parallel` devices."""
        split = self.parameters - self.replicated_parameters
        return (split / model_parallel + self.replicated_parameters) * _DTYPE_BYTES[dtype]

    def table(self, model_parallel: tuple[int, ...] = (1, 2, 4, 8)) -> str:
        rows = [
            "| dtype | " + " | ".join(f"TP={n} (GiB/device)" for n in model_parallel) + " |",
            "|---|" + "---|" * len(model_parallel),
        ]
        for dtype in ("float32", "bfloat16"):
            cells = " | ".join(
                f"{self.per_device_bytes(dtype, n) / 2**30:.2f}" for n in model_parallel
            )
            rows.append(f"| {dtype} | {cells} |")
        return "\n".join(rows)


def parameter_memory(abstract_params: Any) -> ParameterMemory:
    total = replicated = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(abstract_params):
        count = math.prod(leaf.shape) if leaf.shape else 1
        total += count
        if any("norm" in str(getattr(k, "key", k)) for k in path):
            replicated += count
    return ParameterMemory(int(total), int(replicated))
