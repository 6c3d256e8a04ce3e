"""Per-row low-rank adapter deltas inside a batch (the S-LoRA / Punica gathered matmul).

Adapters live in stacks with a slot axis: `a[slot]` is [in, r] and `b[slot]`
is [r, out] (scaling folded into `b`; slot 0 is all zeros, the base model;
ranks zero-padded to one maximum). Each row gathers its own slot's matrices,
so rows for different adapters — and for none — share one compiled batch, and
loading another adapter only writes new values into the stacks.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp

# site name -> (a [slots, in, r], b [slots, r, out]) for one layer (scan slices the layer axis)
LoraLayer = Mapping[str, tuple[jax.Array, jax.Array]]


def lora_delta(
    x_bli: jax.Array, lora: LoraLayer | None, site: str, adapter_ids: jax.Array | None
) -> jax.Array | None:
    """x [B, L, in] → the adapters' contribution [B, L, out], or None when `site` has none."""
    if not lora or site not in lora or adapter_ids is None:
        return None
    a, b = lora[site]
    a_bir = jnp.take(a, adapter_ids, axis=0).astype(x_bli.dtype)
    b_bro = jnp.take(b, adapter_ids, axis=0).astype(x_bli.dtype)
    return jnp.einsum("blr,bro->blo", jnp.einsum("bli,bir->blr", x_bli, a_bir), b_bro)


def add_delta(y: jax.Array, x_bli: jax.Array, lora, site: str, adapter_ids) -> jax.Array:
    """y (any trailing shape whose size is `out`) plus the delta of `x_bli`, reshaped to y."""
    delta = lora_delta(x_bli, lora, site, adapter_ids)
    return y if delta is None else y + delta.reshape(y.shape).astype(y.dtype)


def adapted(layer, lora, site: str, adapter_ids):
    """`layer` (a projection) plus each row's adapter delta on `site`: x [B, L, ...] → y."""
    return lambda x: add_delta(layer(x), x.reshape(*x.shape[:2], -1), lora, site, adapter_ids)
