"""Pooling of hidden states into one vector per row and normalisation, on the device
(the same on the host, for finished vectors: jaxembed/vectors.py).

Everything here runs in float32 whatever the model's compute dtype: the sums
over hundreds of positions and the norm are where bfloat16 would lose most.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxembed.card import POOLING_MODES
from jaxembed.vectors import NORM_EPS


def last_token_index(mask_bl: jax.Array) -> jax.Array:
    """Index of the last real position of each row; right or left padding alike."""
    length = mask_bl.shape[1]
    return length - 1 - jnp.argmax(jnp.flip(mask_bl, axis=1), axis=1)


def pool(hidden_bld: jax.Array, mask_bl: jax.Array, mode: str) -> jax.Array:
    """Pool [B, L, D] hidden states over the real positions of `mask_bl` → [B, D] float32."""
    h = hidden_bld.astype(jnp.float32)
    m = mask_bl.astype(jnp.float32)[..., None]  # [B, L, 1]
    if mode == "cls":
        return h[:, 0]
    if mode in ("mean", "mean_sqrt_len"):
        total = jnp.sum(h * m, axis=1)
        count = jnp.maximum(jnp.sum(m, axis=1), 1e-9)  # sentence-transformers' clamp
        return total / (count if mode == "mean" else jnp.sqrt(count))
    if mode == "max":
        return jnp.max(jnp.where(m > 0, h, -1e9), axis=1)
    if mode == "last_token":
        idx = last_token_index(mask_bl)
        return jnp.take_along_axis(h, idx[:, None, None], axis=1)[:, 0]
    raise ValueError(f"unknown pooling mode {mode!r}; expected one of {POOLING_MODES}")


# Pooling modes that work on packed rows (several sequences per row, told apart by segment id).
PACKABLE_POOLING = ("cls", "mean", "mean_sqrt_len", "last_token")


def pool_segments(
    hidden_bsd: jax.Array, segments_bs: jax.Array, mode: str, max_segments: int
) -> jax.Array:
    """Pool each packed sequence on its own → [B, K, D] float32 (K = max_segments).

    `segments_bs` numbers the sequences of a row 1, 2, … in order (0 = padding), so
    segment k's tokens are the positions where it equals k. Segments a row does not
    have come out as zeros.
    """
    h = hidden_bsd.astype(jnp.float32)
    ids_k = jnp.arange(1, max_segments + 1, dtype=segments_bs.dtype)
    member_bsk = (segments_bs[..., None] == ids_k).astype(jnp.float32)
    if mode in ("mean", "mean_sqrt_len"):
        total_bkd = jnp.einsum("bsk,bsd->bkd", member_bsk, h)
        count_bk1 = jnp.maximum(member_bsk.sum(axis=1), 1e-9)[..., None]
        return total_bkd / (count_bk1 if mode == "mean" else jnp.sqrt(count_bk1))
    if mode in ("cls", "last_token"):
        # The first (last) position of each segment, as a one-hot over positions.
        length = segments_bs.shape[1]
        positions_s = jnp.arange(length)
        masked = jnp.where(
            member_bsk > 0, positions_s[None, :, None], -1 if mode == "last_token" else length
        )
        pick_bk = masked.max(axis=1) if mode == "last_token" else masked.min(axis=1)
        onehot_bks = (positions_s[None, None, :] == pick_bk[..., None]).astype(jnp.float32)
        return jnp.einsum("bks,bsd->bkd", onehot_bks, h)
    raise ValueError(
        f"pooling mode {mode!r} cannot pool packed rows (packable: {PACKABLE_POOLING})"
    )


def l2_normalize(x: jax.Array) -> jax.Array:
    norm = jnp.linalg.norm(x, axis=-1, keepdims=True)
    return x / jnp.maximum(norm, NORM_EPS)
