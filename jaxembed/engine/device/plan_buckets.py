"""`jaxembed plan`'s bucket section: compile buckets from abstract shapes and read their memory.

No weights are read or allocated: the parameters are `ShapeDtypeStruct`s with
their shardings on the requested mesh, and each bucket's program is compiled
by the same `BucketRunner` the server uses, so the numbers are the serving
programs' own (on this machine's backend: plan on the target accelerator for
exact figures; on a CPU they show the shape of the cost, e.g. what blocked
attention saves).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxembed.engine.batching.buckets import (
    DEFAULT_BATCH_SIZES,
    Bucket,
    BucketGrid,
    data_parallel_grid_options,
    default_seq_lengths,
    default_token_budget,
)
from jaxembed.engine.device.memory import BucketMemory, abstract_params_on
from jaxembed.engine.device.runner import BucketRunner
from jaxembed.errors import InvalidInputError
from jaxembed.models.attention import AttentionConfig
from jaxembed.parallel.mesh import MeshShape, make_mesh
from jaxembed.parallel.sharding import DATA_AXIS
from jaxembed.pooling import PACKABLE_POOLING

# Lengths at which the default plan shows the largest bucket (those up to the model's maximum).
PLAN_LENGTHS = (512, 2048, 8192, 32768)


def _card_facts(config: Any, card: Any) -> tuple[str, bool, int]:
    """(pooling, normalize, max length) from the card, or as a bare checkpoint would have them."""
    if card is not None:
        return card.pooling, card.normalize, card.max_length
    decoder = hasattr(config, "num_kv_heads")
    max_length = getattr(config, "max_position_embeddings", None) or 512
    if hasattr(config, "text"):  # CLIP / SigLIP: the text tower's positions
        return "last_token", True, config.max_position_embeddings
    return ("last_token" if decoder else "mean"), decoder, int(max_length)


def default_plan_buckets(grid: BucketGrid) -> list[Bucket]:
    lengths = sorted({s for s in PLAN_LENGTHS if s < grid.max_length} | {grid.max_length})
    return [Bucket(grid.max_rows(grid.seq_bucket(s)), grid.seq_bucket(s)) for s in lengths]


def abstract_model(family: Any, config: Any, dtype: str, mesh_shape: MeshShape, attention: str):
    """(mesh, abstract parameters sharded on it, module): what a plan compiles against."""
    try:
        mesh = make_mesh(mesh_shape)
    except ValueError as e:
        raise InvalidInputError(
            f"{e} (on a CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N presents N)",
            param="mesh",
        ) from None
    params = abstract_params_on(family, config, dtype, mesh)
    module = family.module(
        config,
        dtype=jnp.dtype(dtype),
        param_dtype=jnp.dtype(dtype),
        attention=AttentionConfig(attention),
    )
    return mesh, params, module


def plan_bucket_memory(
    family: Any,
    config: Any,
    card: Any,
    dtype: str,
    mesh_shape: MeshShape,
    attention: str,
    buckets: Sequence[Bucket] | None = None,
    token_budget: int | None = None,
) -> list[BucketMemory]:
    """Compile each bucket for `mesh_shape` from abstract parameters; bytes per device."""
    mesh, params, module = abstract_model(family, config, dtype, mesh_shape, attention)
    pooling, normalize, max_length = _card_facts(config, card)
    requested = list(buckets or [])
    budget, sizes = data_parallel_grid_options(
        mesh.shape[DATA_AXIS],
        token_budget or default_token_budget(jax.default_backend()),
        sorted({*DEFAULT_BATCH_SIZES, *(b.batch for b in requested)}),
    )
    top = max([max_length, *(b.seq for b in requested)])
    seqs = sorted({*default_seq_lengths(top), *(b.seq for b in requested)})
    grid = BucketGrid.for_max_length(top, budget, batch_sizes=sizes, seq_lengths=seqs)
    packed = family.packable and pooling in PACKABLE_POOLING
    runner = BucketRunner(
        module, params, pooling=pooling, normalize=normalize, grid=grid, mesh=mesh, packed=packed
    )
    out = []
    for bucket in requested or default_plan_buckets(grid):
        print(f"compiling bucket {bucket.batch}x{bucket.seq} ...", file=sys.stderr, flush=True)
        out.append(runner.memory(bucket))
    return out


def render_buckets(buckets: Sequence[BucketMemory]) -> str:
    gib = 2**30
    lines = [
        "compiled buckets (bytes per device, from the programs' memory analysis):",
        f"{'program':8s} {'bucket':>10s}  {'attention':10s} {'arguments':>12s} {'output':>10s} "
        f"{'temporaries':>12s} {'total':>10s}",
    ]
    for b in buckets:
        lines.append(
            f"{b.program:8s} {b.bucket.batch:>4d}x{b.bucket.seq:<5d}  {b.attention:10s} "
            f"{b.argument_bytes / gib:>10.3f}Gi {b.output_bytes / 2**20:>8.2f}Mi "
            f"{b.temp_bytes / gib:>10.3f}Gi {b.total_bytes / gib:>8.3f}Gi"
        )
    return "\n".join(lines)
