"""Finished vectors on the host (numpy only): matryoshka truncation, normalisation, the means
of a video's frames or a long text's windows, fusion of modalities.

No JAX here, so the HTTP front-ends finish vectors without loading it; the device-side
pooling is jaxembed/pooling.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# torch.nn.functional.normalize's default, which sentence-transformers uses.
NORM_EPS = 1e-12


def truncate_dimensions(vectors: np.ndarray, dims: int | None, normalize: bool) -> np.ndarray:
    """Matryoshka reduction on the host: keep the first `dims` values, renormalise.

    Renormalising only when the model normalises keeps an unnormalised model's
    truncated vector equal to the prefix of its full vector.
    """
    if dims is None or dims >= vectors.shape[-1]:
        return vectors
    # A copy: a contiguous prefix would otherwise be a view, renormalised in the caller's array.
    out = np.array(vectors[..., :dims], dtype=np.float32, copy=True)
    if normalize:
        norm = np.linalg.norm(out, axis=-1, keepdims=True)
        out /= np.maximum(norm, NORM_EPS)
    return out


def l2_normalize_rows(vectors: np.ndarray) -> np.ndarray:
    """Unit-length rows (float32); a zero row stays zero."""
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return (vectors / np.maximum(norms, NORM_EPS)).astype(np.float32)


def weighted_mean(vectors: np.ndarray, weights: np.ndarray | None, normalize: bool) -> np.ndarray:
    """The (weighted) mean of several vectors of one item, renormalised when the model
    normalises: a video's frames, an over-long text's windows (weighted by their tokens)."""
    mean = np.average(vectors.astype(np.float64), axis=0, weights=weights).astype(np.float32)
    if normalize:
        mean /= max(float(np.linalg.norm(mean)), NORM_EPS)
    return mean


def mean_of_frames(frame_vectors: np.ndarray, normalize: bool) -> np.ndarray:
    """A video's vector: the mean of its frames' vectors, renormalised when the model normalises."""
    return weighted_mean(frame_vectors, None, normalize)


def fuse_modalities(parts: Sequence[tuple[np.ndarray, float]]) -> np.ndarray:
    """One vector for an item with several modalities: the weighted sum of each part's
    L2-normalised vector, normalised again (parts on one scale, so weights mean what they say)."""
    total = np.zeros_like(parts[0][0], dtype=np.float64)
    for vector, weight in parts:
        total += weight * vector / max(float(np.linalg.norm(vector)), NORM_EPS)
    return (total / max(float(np.linalg.norm(total)), NORM_EPS)).astype(np.float32)
