"""Orbax save/restore of parameter trees, one Orbax item per leaf.

One item per leaf (`params/<dotted.path>/`) lets `jaxembed convert` write a
multi-GB model while holding a single leaf in memory, and restore reads each
leaf straight into the device and sharding named by an abstract tree
(`jax.ShapeDtypeStruct` with a sharding), never gathering the model on one host.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxembed.errors import ModelLoadError

# Bytes Orbax may have in flight while writing one leaf.
SAVE_CONCURRENT_GB = 1


def _names(path: tuple) -> tuple[str, ...]:
    return tuple(str(getattr(k, "key", k)) for k in path)


def leaf_dir(directory: Path, names: tuple[str, ...]) -> Path:
    return directory / ".".join(names)


def save_leaves(directory: str | Path, leaves: Iterable[tuple[tuple[str, ...], Any]]) -> int:
    """Write (path, array) pairs as they come; returns the bytes written."""
    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    cpu = jax.devices("cpu")[
        0
    ]  # host arrays become CPU-device arrays (no copy), never accelerator ones
    import orbax.checkpoint as ocp  # only converted checkpoints need it (~0.2 s to import)

    handler = ocp.PyTreeCheckpointHandler(
        save_concurrent_gb=SAVE_CONCURRENT_GB, use_compression=False
    )
    checkpointer = ocp.Checkpointer(handler)
    total = 0
    for names, array in leaves:
        value = jax.device_put(array, cpu) if isinstance(array, np.ndarray) else array
        checkpointer.save(
            leaf_dir(directory, names), args=ocp.args.PyTreeSave({"value": value}), force=True
        )
        total += value.size * value.dtype.itemsize
        del value, array
    return total


def save_params(directory: str | Path, params: Any) -> int:
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return save_leaves(directory, ((_names(path), leaf) for path, leaf in flat))


def restore_params(directory: str | Path, abstract_params: Any) -> Any:
    """Read a tree saved by `save_params`/`save_leaves` into the shardings of `abstract_params`."""
    directory = Path(directory).resolve()
    if not directory.is_dir():
        raise ModelLoadError(f"no Orbax checkpoint at {directory}")
    import orbax.checkpoint as ocp

    checkpointer = ocp.StandardCheckpointer()

    def restore(path: tuple, abstract: jax.ShapeDtypeStruct) -> jax.Array:
        where = leaf_dir(directory, _names(path))
        if not where.is_dir():
            raise ModelLoadError(f"Orbax checkpoint {directory.name} lacks parameter {where.name}")
        try:
            return checkpointer.restore(where, {"value": abstract})["value"]
        except (ValueError, KeyError, FileNotFoundError) as e:
            raise ModelLoadError(f"parameter {where.name} does not fit the model: {e}") from None

    return jax.tree_util.tree_map_with_path(restore, abstract_params)


def abstract_with_sharding(abstract_params: Any, shardings: Any) -> Any:
    """Attach each leaf's target sharding (a tree of the same structure) to an abstract tree.

    Checkpoints hold whole (unsharded) arrays, so one checkpoint restores onto any
    mesh shape: Orbax reads only the slices each local device needs.
    """
    return jax.tree.map(
        lambda x, sharding: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
        abstract_params,
        shardings,
    )
