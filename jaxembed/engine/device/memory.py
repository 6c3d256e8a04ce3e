"""Memory plans read from the compiled bucket programs themselves.

What a bucket needs on a device is what XLA allocated for its program:
`compiled.memory_analysis()` gives the argument (parameters + batch), output and
temporary bytes per device after fusion and buffer reuse — the number that
decides whether a 1x32768 bucket fits, and the one that shows what memory-
efficient attention saves. `jaxembed plan` reports it from abstract shapes (no
weights), `serve` checks the grid against the device's memory before warm-up
and shrinks the batch of any bucket that would not fit.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxembed.engine.batching.buckets import Bucket, BucketGrid
from jaxembed.errors import ModelLoadError

log = logging.getLogger("jaxembed.engine")


@dataclasses.dataclass(frozen=True)
class BucketMemory:
    """Bytes per device of one bucket's compiled program."""

    bucket: Bucket
    attention: str  # the implementation that runs at this length
    argument_bytes: int  # parameters + the batch
    output_bytes: int
    temp_bytes: int  # activations and scratch
    alias_bytes: int = 0
    program: str = "text"  # which program: text, or a vision-language model's vision / decoder

    @property
    def total_bytes(self) -> int:
        return self.argument_bytes + self.output_bytes + self.temp_bytes - self.alias_bytes

    def to_dict(self) -> dict[str, Any]:
        return {
            "bucket": f"{self.bucket.batch}x{self.bucket.seq}",
            "program": self.program,
            "attention": self.attention,
            "temp_bytes": self.temp_bytes,
            "argument_bytes": self.argument_bytes,
            "output_bytes": self.output_bytes,
            "total_bytes": self.total_bytes,
        }


def from_compiled(
    compiled: Any, bucket: Bucket, attention: str, program: str = "text"
) -> BucketMemory:
    stats = compiled.memory_analysis()
    if stats is None:  # a backend that does not report it
        raise ModelLoadError("this backend does not report compiled memory (memory_analysis)")
    return BucketMemory(
        bucket=bucket,
        attention=attention,
        argument_bytes=int(stats.argument_size_in_bytes),
        output_bytes=int(stats.output_size_in_bytes),
        temp_bytes=int(stats.temp_size_in_bytes),
        alias_bytes=int(stats.alias_size_in_bytes),
        program=program,
    )


def parse_buckets(text: str) -> list[Bucket]:
    """`"1x8192,4x2048"` → buckets (batch x length)."""
    buckets = []
    for part in text.split(","):
        batch, sep, seq = part.strip().lower().partition("x")
        if not sep or not batch.isdigit() or not seq.isdigit() or int(batch) < 1 or int(seq) < 1:
            raise ValueError(f"expected BATCHxLENGTH buckets such as 1x8192, got {part!r}")
        buckets.append(Bucket(int(batch), int(seq)))
    return buckets


def device_memory_bytes(override_gib: float | None = None) -> int | None:
    """Memory of one device: `--device-memory-gib`, else what the backend reports, else None."""
    if override_gib is not None:
        return int(override_gib * 2**30)
    stats = jax.local_devices()[0].memory_stats() or {}
    limit = stats.get("bytes_limit")
    return int(limit) if limit else None


def largest_bucket_per_length(grid: BucketGrid, lengths: Sequence[int]) -> list[Bucket]:
    return [Bucket(grid.max_rows(seq), seq) for seq in lengths]


def fit_grid(runner: Any, budget_bytes: int, lengths: Sequence[int]) -> BucketGrid:
    """The runner's grid with each length's batch shrunk until its program fits `budget_bytes`.

    Longest lengths first; each check compiles the bucket through the runner (the
    program warm-up would compile anyway, kept), every length's first candidate compiled
    side by side up front. A length at which even the
    smallest batch does not fit is a start-up error naming the bucket and bytes.
    """
    grid = runner.grid
    runner.memories([Bucket(grid.max_rows(seq), seq) for seq in lengths])  # side by side
    for seq in sorted(lengths, reverse=True):
        while True:
            bucket = Bucket(grid.max_rows(seq), seq)
            memory = runner.memory(bucket)
            if memory.total_bytes <= budget_bytes:
                break
            capped = cap_below(grid, bucket, memory, budget_bytes)
            if capped is None:
                raise ModelLoadError(
                    f"bucket {bucket.batch}x{bucket.seq} needs {memory.total_bytes / 2**30:.2f} "
                    f"GiB per device ({memory.attention} attention; parameters and batch "
                    f"{memory.argument_bytes / 2**30:.2f} GiB, activations "
                    f"{memory.temp_bytes / 2**30:.2f} GiB) but the plan allows "
                    f"{budget_bytes / 2**30:.2f} GiB: use --attention blocked, a shorter "
                    "--seq-lengths maximum, a larger --mesh model axis, or raise "
                    "--memory-fraction"
                )
            grid = runner.grid = capped
    return grid


def cap_below(
    grid: BucketGrid, bucket: Bucket, memory: BucketMemory, budget_bytes: int
) -> BucketGrid | None:
    """`grid` with batches of `bucket`'s length limited to the batch size below `bucket`'s
    (logged), since its program needs `memory` > `budget_bytes`; None when no batch is
    smaller. The one rule for the start-up check and for programs checked as they compile."""
    smaller = [b for b in grid.batch_sizes if b < bucket.batch]
    if not smaller:
        return None
    log.warning(
        "bucket %dx%d needs %.2f GiB > %.2f GiB allowed: batches of length %d limited to %d rows",
        bucket.batch,
        bucket.seq,
        memory.total_bytes / 2**30,
        budget_bytes / 2**30,
        bucket.seq,
        smaller[-1],
    )
    return grid.with_row_cap(bucket.seq, smaller[-1])


def abstract_params_on(family: Any, config: Any, dtype: str, mesh: Any) -> Any:
    """Shape/dtype/sharding of every parameter on `mesh`, without allocating any."""
    from jaxembed.parallel.sharding import param_shardings

    abstract = family.abstract_params(config, jnp.dtype(dtype))
    shardings = param_shardings(abstract, family.param_axes(config), mesh)
    return jax.tree.map(
        lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
        abstract,
        shardings,
    )


def param_bytes_per_device(params: Any) -> int:
    """Bytes of a parameter tree held by one device (its shard of each array; the largest
    over devices where shards differ in size)."""
    per_device: dict[Any, int] = {}
    for leaf in jax.tree.leaves(params):
        for shard in getattr(leaf, "addressable_shards", ()):
            per_device[shard.device] = per_device.get(shard.device, 0) + shard.data.nbytes
    return max(per_device.values(), default=0)
