"""Mesh shapes (`--mesh data=2,model=4`) and mesh construction from the available devices."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh

from jaxembed.parallel.sharding import DATA_AXIS, MODEL_AXIS


@dataclasses.dataclass(frozen=True)
class MeshShape:
    """Sizes of the `data` and `model` axes; None = whatever the device count leaves."""

    data: int | None = None
    model: int = 1

    @classmethod
    def parse(cls, text: str) -> MeshShape:
        """'data=2,model=4', 'model=8' (data fills the rest) or '2x4' (data x model)."""
        text = text.strip()
        try:
            if "x" in text and "=" not in text:
                data, model = (int(v) for v in text.split("x"))
                return cls(data, model)
            sizes = {}
            for part in filter(None, (p.strip() for p in text.split(","))):
                name, value = part.split("=")
                if name.strip() not in (DATA_AXIS, MODEL_AXIS):
                    raise ValueError(f"unknown mesh axis {name.strip()!r}")
                sizes[name.strip()] = int(value)
        except ValueError as e:
            raise ValueError(
                f"bad mesh {text!r} ({e}); expected e.g. data=2,model=4 or 2x4"
            ) from None
        shape = cls(sizes.get(DATA_AXIS), sizes.get(MODEL_AXIS, 1))
        if (shape.data is not None and shape.data < 1) or shape.model < 1:
            raise ValueError(f"mesh axis sizes must be positive: {text!r}")
        return shape

    def resolve(self, device_count: int) -> tuple[int, int]:
        """(data, model) for `device_count` devices; every device is used exactly once."""
        data = self.data if self.data is not None else device_count // self.model
        if data < 1 or data * self.model != device_count:
            raise ValueError(
                f"mesh data={self.data if self.data is not None else '?'},model={self.model} "
                f"does not use exactly the {device_count} available devices"
            )
        return data, self.model


def make_mesh(shape: MeshShape | None = None, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ("data", "model") mesh over `devices` (default: every device of every process).

    `model` is the inner axis, so a tensor-parallel group sits on neighbouring
    devices (one host, fast links) and `data` spans hosts.
    """
    devices = list(devices if devices is not None else jax.devices())
    data, model = (shape or MeshShape()).resolve(len(devices))
    if len(devices) == len(jax.devices()) and jax.process_count() == 1:
        # Topology-aware order on TPU/GPU (neighbouring chips share a `model` group).
        grid = mesh_utils.create_device_mesh((data, model), devices)
    else:
        # Keep each process's devices together along `model` (jax.devices() orders by process).
        grid = np.asarray(devices, dtype=object).reshape(data, model)
    # Auto axes: shardings come from in/out shardings and constraints (the pjit model).
    return Mesh(grid, (DATA_AXIS, MODEL_AXIS))


def describe(mesh: Mesh) -> str:
    return ",".join(f"{name}={size}" for name, size in mesh.shape.items())
