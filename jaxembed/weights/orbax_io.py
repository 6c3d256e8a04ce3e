"""The one save and the one restore of parameter trees (Orbax).

Restore takes an abstract tree (`jax.ShapeDtypeStruct` with a sharding per
leaf), so parameters are read straight into the devices and layouts they
will be used in, never gathered on one host first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxembed.errors import ModelLoadError

# Bytes Orbax may have in flight while writing: bounds the conversion's peak host memory
# to about one copy of the weights plus this buffer (measured: tools/measure_convert_memory.py).
SAVE_CONCURRENT_GB = 1


def save_params(directory: str | Path, params: Any) -> None:
    """Write a parameter tree (numpy or jax arrays) as an Orbax checkpoint."""
    directory = Path(directory).resolve()
    # Host arrays become CPU-device arrays (no copy on the CPU backend), never accelerator ones.
    cpu = jax.devices("cpu")[0]
    params = jax.tree.map(
        lambda x: jax.device_put(x, cpu) if isinstance(x, np.ndarray) else x, params
    )
    handler = ocp.PyTreeCheckpointHandler(
        save_concurrent_gb=SAVE_CONCURRENT_GB, use_compression=False
    )
    checkpointer = ocp.Checkpointer(handler)
    checkpointer.save(directory, args=ocp.args.PyTreeSave(params), force=True)


def restore_params(directory: str | Path, abstract_params: Any) -> Any:
    """Read a tree saved by `save_params` into the shardings named by `abstract_params`."""
    directory = Path(directory).resolve()
    if not directory.is_dir():
        raise ModelLoadError(f"no Orbax checkpoint at {directory}")
    checkpointer = ocp.StandardCheckpointer()
    try:
        return checkpointer.restore(directory, abstract_params)
    except (ValueError, KeyError, FileNotFoundError) as e:
        raise ModelLoadError(
            f"Orbax checkpoint {directory.name} does not fit the model: {e}"
        ) from None


def abstract_with_sharding(
    abstract_params: Any, sharding: jax.sharding.Sharding | None = None
) -> Any:
    """Attach a sharding (default: the first local device) to every leaf of an abstract tree."""
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), abstract_params
    )
