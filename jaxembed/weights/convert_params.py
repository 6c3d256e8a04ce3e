"""Turn a safetensors checkpoint into Flax parameters by applying a rule table.

Every name and shape is checked from the headers before any data is read
(`plan_conversion`); then leaves are built one at a time (`iter_leaves`), each
into a preallocated array of the target dtype with stacked layers filled
slice by slice and each source tensor's pages released after use. A
streaming consumer (`jaxembed convert`) therefore holds about one leaf at a
time; `assemble_params` collects them into the whole tree for serving.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

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
    if layout is Layout.CONV:
        return (target[-1], *target[:-1])
    return (target[-1], math.prod(target[:-1]))  # OUT_KERNEL


def _to_flax(array: np.ndarray, layout: Layout, target: tuple[int, ...]) -> np.ndarray:
    if layout in (Layout.IN_KERNEL, Layout.OUT_KERNEL):
        array = array.T
    elif layout is Layout.CONV:
        array = array.transpose(1, 2, 3, 0)
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


def _resolve(
    checkpoint: SafetensorsCheckpoint, prefix: str, rule: ParamRule, layer: int | None
) -> str | None:
    prefix = "" if rule.top_level else prefix
    for key in (rule.hf_key, *rule.aliases):
        full = prefix + (key.format(layer=layer) if layer is not None else key)
        if full in checkpoint:
            return full
    return None


@dataclasses.dataclass(frozen=True)
class PlannedLeaf:
    rule: ParamRule
    shape: tuple[int, ...]  # the Flax leaf's shape (stacked over layers for per-layer rules)
    keys: tuple[str, ...]  # the HF tensors that fill it, one per layer for per-layer rules


@dataclasses.dataclass(frozen=True)
class ConversionPlan:
    checkpoint: SafetensorsCheckpoint
    leaves: tuple[PlannedLeaf, ...]


def plan_conversion(
    checkpoint: SafetensorsCheckpoint,
    rules: Sequence[ParamRule],
    abstract_params: Mapping[str, Any],
    *,
    num_layers: int,
    ignored_prefixes: Sequence[str] = (),
    wrapper_prefixes: Sequence[str] = (),
) -> ConversionPlan:
    """Check every tensor name and shape from the headers alone, before any data is read.

    Raises WeightMismatchError listing every missing tensor, every unexpected
    one and every shape mismatch at once, so a bad checkpoint is diagnosed in one run.
    """
    prefix = _strip_prefix(checkpoint.keys(), rules[0].hf_key, wrapper_prefixes)
    missing: list[str] = []
    mismatched: list[str] = []
    used: set[str] = set()
    leaves: list[PlannedLeaf] = []
    for rule in rules:
        try:
            target = tuple(_get_path(abstract_params, rule.flax_path).shape)
        except KeyError:
            raise WeightMismatchError(
                f"rule for unknown parameter {'/'.join(rule.flax_path)}"
            ) from None
        leaf_shape = target[1:] if rule.per_layer else target
        keys = []
        depth = rule.num_layers or num_layers
        for index in range(depth) if rule.per_layer else [None]:
            layer = None if index is None else index + rule.layer_offset
            key = _resolve(checkpoint, prefix, rule, layer)
            if key is None:
                missing.append(
                    ("" if rule.top_level else prefix)
                    + (rule.hf_key.format(layer=layer) if layer is not None else rule.hf_key)
                )
                continue
            used.add(key)
            want = _expected_hf_shape(rule.layout, leaf_shape)
            have = checkpoint.shape(key)
            if rule.rows:  # the rows taken must exist; the leaf is made of them alone
                if max(rule.rows) >= have[0]:
                    mismatched.append(f"{key}: has {have[0]} rows, rows {list(rule.rows)} wanted")
                have = (len(rule.rows), *have[1:])
            if have != want:
                mismatched.append(f"{key}: checkpoint has {list(have)}, model expects {list(want)}")
            keys.append(key)
        leaves.append(PlannedLeaf(rule, target, tuple(keys)))

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
    return ConversionPlan(checkpoint, tuple(leaves))


def iter_leaves(
    plan: ConversionPlan, dtype: np.dtype, progress: Progress | None = None
) -> Iterator[tuple[tuple[str, ...], np.ndarray]]:
    """Build one Flax leaf at a time (stacked layers filled slice by slice), in `dtype`."""
    for step, leaf in enumerate(plan.leaves):
        out = np.empty(leaf.shape, dtype=dtype)
        slice_shape = leaf.shape[1:] if leaf.rule.per_layer else leaf.shape
        for layer, key in enumerate(leaf.keys):
            source = plan.checkpoint.get(key)
            if leaf.rule.rows:
                source = source[list(leaf.rule.rows)]
            value = _to_flax(source, leaf.rule.layout, slice_shape)
            if leaf.rule.per_layer:
                out[layer] = value
            else:
                out[...] = value
            del value
            plan.checkpoint.release(key)
        yield leaf.rule.flax_path, out
        if progress:
            progress(step + 1, len(plan.leaves), "/".join(leaf.rule.flax_path))


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
    """The whole parameter tree (numpy arrays of `dtype`) described by `abstract_params`."""
    plan = plan_conversion(
        checkpoint,
        rules,
        abstract_params,
        num_layers=num_layers,
        ignored_prefixes=ignored_prefixes,
        wrapper_prefixes=wrapper_prefixes,
    )
    params: dict[str, Any] = {}
    for path, array in iter_leaves(plan, dtype, progress):
        _set_path(params, path, array)
    return params


def _preview(items: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... (+{len(items) - limit} more)" if len(items) > limit else "")
