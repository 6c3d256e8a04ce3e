"""A reranker's logits → scores, and scores → a ranking (pure numpy, shared by every API)."""

from __future__ import annotations

import numpy as np

from jaxembed.card import SCORE_ACTIVATIONS


def activate(logits: np.ndarray, activation: str) -> np.ndarray:
    """[N, labels] float32 logits → scores: sigmoid (one label), softmax over the labels,
    or unchanged ("identity"); computed in float64 so tiny scores do not round to 0 or 1."""
    x = np.asarray(logits, dtype=np.float64)
    if activation == "sigmoid":
        out = 0.5 * (1.0 + np.tanh(0.5 * x))  # = 1 / (1 + e^-x), without overflow
    elif activation == "softmax":
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        out = e / e.sum(axis=-1, keepdims=True)
    elif activation == "identity":
        out = x
    else:
        raise ValueError(f"activation {activation!r} is not one of {SCORE_ACTIVATIONS}")
    return out.astype(np.float32)


def ranking(scores: np.ndarray, top_n: int | None = None) -> list[int]:
    """Indices of the `top_n` highest scores (all by default), best first; ties keep the
    input order, so the same request always ranks the same way."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    return [int(i) for i in order[: top_n if top_n is not None else len(order)]]
