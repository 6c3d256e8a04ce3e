"""Packed rows: several sequences in one row, told apart by segment ids (1, 2, …; 0 = padding).

The model families that take packed rows (`packed=True`, segment ids passed
where the attention mask goes) count their positions with these helpers, so that
every sequence sees exactly what it would see alone: positions counted from its
own start, and (models/attention.py, from the same segment ids) only tokens of
its own segment.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def running_count(flags_bl: jax.Array, segments_bl: jax.Array | None) -> jax.Array:
    """Inclusive running count of `flags` along each row, restarting where a segment starts.

    Segments of a packed row are contiguous, so a segment's count is the row's
    count minus what it was just before the segment's first position.
    """
    count_bl = jnp.cumsum(flags_bl, axis=1)
    if segments_bl is None:
        return count_bl
    length = segments_bl.shape[1]
    previous = jnp.pad(segments_bl[:, :-1], ((0, 0), (1, 0)), constant_values=-1)
    starts_bl = jnp.where(segments_bl != previous, jnp.arange(length), 0)
    start_bl = jax.lax.cummax(starts_bl, axis=1)
    before_bl = jnp.take_along_axis(count_bl - flags_bl, start_bl, axis=1)
    return count_bl - before_bl


def token_positions(mask_bl: jax.Array, segments_bl: jax.Array | None) -> jax.Array:
    """0-based positions counting real tokens (mask > 0), restarting per segment if packed."""
    return jnp.maximum(running_count((mask_bl > 0).astype(jnp.int32), segments_bl) - 1, 0)


def segment_ids(attention_mask: jax.Array, packed: bool) -> jax.Array:
    """int32 [B, L] segment ids for AttentionMask: the packed rows' own ids, or 1 for every
    real token of a padded row (0 = padding either way)."""
    return (attention_mask if packed else attention_mask > 0).astype(jnp.int32)
