"""Assemble a Flax parameter pytree from a safetensors checkpoint by applying a rule table.

Each Flax leaf is built into one preallocated array of the target dtype and
stacked layers are filled slice by slice, so peak host memory is about one
copy of the weights in the target dtype plus a single source tensor.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from jaxembed.errors import WeightMismatchError
from jaxembed.weights.maps import Layout, ParamRule
from jaxembed.weights.safetensors_io import SafetensorsCheckpoint

Progress = Callable[[int, int, str], None]


def _expected_hf_shape(layout: Layout, target: tuple[int, ...]) -> tuple[int, ...]:
    if layout is Layout.COPY:
        return target
    if layout is Layout.FLAT:
        return (math.prod(target),)
    if layout is Layout.IN_KERNEL:
        return (math.prod(target[1:]), target[0])
    return (target[-1], math.prod(target[:-1]))  # OUT_KERNEL


def _to_flax(array: np.ndarray, layout: Layout, target: tuple[int, ...]) -> np.ndarray:
    if layout in (Layout.IN_KERNEL, Layout.OUT_KERNEL):
        array = array.T
    return array.reshape(target)


def _strip_prefix(keys: Iterable[str], anchor: str, wrappers: Sequence[str]) -> str:
    """The wrapper prefix (e.g. `bert.`) in front of `anchor`, or '' when keys are bare."""
    keys = list(keys)
    if any(k.startswith(anchor) for k in keys):
        return ""
    for prefix in wrappers:
        if any(k.startswith(prefix + anchor) for k in keys):
            return prefix
    return ""


def _get_path(tree: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    for part in path:
        tree = tree[part]
    return tree


def _set_path(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for part in path[:-1]:
        tree = tree.setdefault(part, {})
    tree[path[-1]] = value


def assemble_params(
    checkpoint: SafetensorsCheckpoint,
    rules: Sequence[ParamRule],
    abstract_params: Mapping[str, Any],
    *,
    num_layers: int,
    dtype: np.dtype,
    ignored_prefixes: Sequence[str] = (),
    wrapper_prefixes: Sequence[str] = (),
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Build the parameter tree (numpy arrays of `dtype`) described by `abstract_params`.

    Raises WeightMismatchError listing every missing tensor, every unexpected
    one and every shape mismatch at once, so a bad checkpoint is diagnosed in one run.
    """
    prefix = _strip_prefix(checkpoint.keys(), rules[0].hf_key, wrapper_prefixes)
    missing: list[str] = []
    mismatched: list[str] = []
    used: set[str] = set()
    params: dict[str, Any] = {}

    def resolve(rule: ParamRule, layer: int | None) -> str | None:
        for key in (rule.hf_key, *rule.aliases):
            full = prefix + (key.format(layer=layer) if layer is not None else key)
            if full in checkpoint:
                return full
        return None

    for step, rule in enumerate(rules):
        try:
            target = tuple(_get_path(abstract_params, rule.flax_path).shape)
        except KeyError:
            raise WeightMismatchError(
                f"rule for unknown parameter {'/'.join(rule.flax_path)}"
            ) from None
        layers = range(num_layers) if rule.per_layer else [None]
        leaf_shape = target[1:] if rule.per_layer else target
        out = np.empty(target, dtype=dtype)
        for layer in layers:
            key = resolve(rule, layer)
            shown = prefix + (rule.hf_key.format(layer=layer) if layer is not None else rule.hf_key)
            if key is None:
                missing.append(shown)
                continue
            used.add(key)
            want = _expected_hf_shape(rule.layout, leaf_shape)
            have = checkpoint.shape(key)
            if have != want:
                mismatched.append(f"{key}: checkpoint has {list(have)}, model expects {list(want)}")
                continue
            value = _to_flax(checkpoint.get(key), rule.layout, leaf_shape)
            if layer is None:
                out[...] = value
            else:
                out[layer] = value
            del value
            checkpoint.release(key)
        _set_path(params, rule.flax_path, out)
        if progress:
            progress(step + 1, len(rules), "/".join(rule.flax_path))

    unexpected = sorted(
        k
        for k in checkpoint
        if k not in used and not any(k.removeprefix(prefix).startswith(p) for p in ignored_prefixes)
    )
    if missing or mismatched or unexpected:
        parts = []
        if missing:
            parts.append(f"missing tensors ({len(missing)}): {_preview(missing)}")
        if unexpected:
            parts.append(f"unexpected tensors ({len(unexpected)}): {_preview(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatches ({len(mismatched)}): {_preview(mismatched)}")
        raise WeightMismatchError("checkpoint does not fit the architecture: " + "; ".join(parts))
    return params


def _preview(items: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... (+{len(items) - limit} more)" if len(items) > limit else "")


def tree_nbytes(tree: Any) -> int:
    return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))
