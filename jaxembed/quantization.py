"""Quantized embeddings: int8, uint8, binary and ubinary, as sentence-transformers defines them.

`quantize` equals `sentence_transformers.quantization.quantize_embeddings` given the same
ranges: int8/uint8 map each dimension's [min, max] (from a calibration set) onto 256 steps
(`floor((x - min) / step)`, clipped; int8 is that minus 128); binary/ubinary set a bit where
the value is > 0 and pack 8 dimensions per byte, most significant bit first (`np.packbits`),
ubinary as uint8 and binary as that minus 128 in int8.

The calibration set is `CALIBRATION_TEXTS` below: 1,000 sentences generated from fixed word
lists with a fixed seed (every topic, length and register we could cheaply vary), so every
deployment of a model gets the same ranges; operators can supply their own ranges instead.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from jaxembed.errors import InvalidInputError

PRECISIONS = ("float32", "int8", "uint8", "binary", "ubinary")
INTEGER_DTYPES = {"int8": np.int8, "uint8": np.uint8, "binary": np.int8, "ubinary": np.uint8}
CALIBRATION_VERSION = "jaxembed-calibration-v1"
CALIBRATION_SIZE = 1000


def check_precision(precision: str, dimensions: int, param: str = "embedding_type") -> None:
    """A precision we know, and for the bit-packed ones a width they can pack."""
    if precision not in PRECISIONS:
        raise InvalidInputError(
            f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}", param=param
        )
    if precision.endswith("binary") and dimensions % 8:
        raise InvalidInputError(
            f"{precision} packs 8 dimensions per byte: {dimensions} dimensions are not a "
            "multiple of 8 (choose `dimensions` accordingly)",
            param=param,
        )


def ranges_of(calibration: np.ndarray) -> np.ndarray:
    """[2, D]: each dimension's minimum and maximum over the calibration vectors."""
    return np.stack([calibration.min(axis=0), calibration.max(axis=0)]).astype(np.float32)


def quantize(vectors: np.ndarray, precision: str, ranges: np.ndarray | None = None) -> np.ndarray:
    """[N, D] float32 → the precision's array ([N, D] for (u)int8, [N, D / 8] for (u)binary)."""
    if precision == "float32":
        return vectors.astype(np.float32, copy=False)
    if precision in ("int8", "uint8"):
        if ranges is None:
            raise ValueError("int8/uint8 need calibration ranges")
        starts = ranges[0].astype(np.float32)
        steps = (ranges[1].astype(np.float32) - starts) / 255
        steps = np.where(steps == 0, 1, steps)
        steps_taken = np.clip(np.floor((vectors - starts) / steps), 0, 255)
        if precision == "uint8":
            return steps_taken.astype(np.uint8)
        return (steps_taken - 128).astype(np.int8)
    bits = np.packbits(vectors > 0, axis=-1)
    if precision == "ubinary":
        return bits
    if precision == "binary":
        return (bits.astype(np.int16) - 128).astype(np.int8)
    raise ValueError(f"unknown precision {precision!r}")


def read_ranges(path: str | Path, dimensions: int) -> np.ndarray:
    """Operator-supplied ranges: a .npy of shape [2, D] (min row, max row) or a JSON
    `[[min...], [max...]]`; D must be the model's full dimension."""
    path = Path(path)
    if path.suffix == ".npy":
        ranges = np.load(path, allow_pickle=False)
    else:
        import json

        ranges = np.asarray(json.loads(path.read_text()), dtype=np.float32)
    if ranges.shape != (2, dimensions):
        raise ValueError(f"{path}: expected ranges of shape (2, {dimensions}), got {ranges.shape}")
    return ranges.astype(np.float32)


_SUBJECTS = (
    "The committee", "A young engineer", "Our support team", "The new policy", "This recipe",
    "The river", "An old map", "The quarterly report", "Her grandmother", "The startup",
    "A small village", "The compiler", "The orchestra", "Most patients", "The satellite",
    "The museum", "Every student", "The storm", "A stray cat", "The database",
)  # fmt: skip
_VERBS = (
    "explains", "delays", "improves", "describes", "questions", "reveals", "reduces",
    "celebrates", "ignores", "predicts", "repairs", "measures", "compares", "protects",
)  # fmt: skip
_OBJECTS = (
    "the cost of housing", "a rare genetic mutation", "the history of jazz", "battery life",
    "the rules of chess", "climate data from 1990", "customer complaints", "the tax form",
    "a bug in the login page", "ancient Roman roads", "the price of coffee", "sleep quality",
    "a vegetarian lasagna", "the election results", "neural network training", "tide tables",
)  # fmt: skip
_TAILS = (
    "", " in great detail", " without any warning", " for the third time this year",
    " according to the latest survey", " after a long debate", " because nobody else would",
    " — surprisingly well", ", or so the rumour goes", " on a rainy Tuesday",
)  # fmt: skip
_QUESTIONS = (
    "How do I reset my password?", "What is the capital of Australia?",
    "Why is the sky blue?", "Where can I buy fresh bread near the station?",
    "Which vaccine do children need at age four?", "When was the printing press invented?",
    "Is it safe to run a marathon with asthma?", "How much does a used bicycle cost?",
)  # fmt: skip


def calibration_texts(count: int = CALIBRATION_SIZE, seed: int = 0) -> list[str]:
    """The fixed calibration corpus: statements, questions and keyword queries (deterministic)."""
    rng = random.Random(seed)
    texts = []
    for i in range(count):
        kind = i % 5
        if kind == 3:
            texts.append(rng.choice(_QUESTIONS))
        elif kind == 4:
            texts.append(" ".join(rng.sample(_OBJECTS, 2)).replace("the ", ""))
        else:
            sentence = f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}"
            texts.append(sentence + rng.choice(_TAILS) + ".")
    return texts
