"""Retrieval with quantized embeddings: recall@10 of int8 and binary against float32.

The labelled set (synthetic, deterministic): documents are distinct standard-library
docstrings of at least 12 words (`tests/texts.py`); each document's query is 4 of its words
picked at random (order kept) — a query that shares a few words with its document, as a
keyword search would, not a copy of it. A query is answered by its document if that document is among its 10 nearest
documents: float32 and int8/uint8 by dot product (integers in int32), binary by Hamming
distance of the packed bits (what vector databases do for binary). Reports recall@10 per
precision and the index bytes per document.

    python -m tools.bench_quantization --documents 600 --out tools/results/quantization.json
"""

from __future__ import annotations

import argparse
import datetime
import random

import numpy as np

from tools.bench_embed import cpu_model, write_results

QUERY_WORDS = 4


def labelled_set(count: int, seed: int = 0) -> tuple[list[str], list[str]]:
    from tests.texts import passages

    documents = [d for d in dict.fromkeys(passages(10_000)) if len(d.split()) >= 12][:count]
    rng = random.Random(seed)
    queries = []
    for doc in documents:
        words = doc.split()
        keep = sorted(rng.sample(range(len(words)), QUERY_WORDS))
        queries.append(" ".join(words[i] for i in keep))
    return documents, queries


def recall_at(scores: np.ndarray, k: int) -> float:
    """Share of queries (rows) whose own document (same index) is among their top k."""
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float(np.mean([i in row for i, row in enumerate(top)]))


def scores_for(precision: str, queries: np.ndarray, documents: np.ndarray) -> np.ndarray:
    if precision.endswith("binary"):
        q = np.unpackbits(queries.view(np.uint8), axis=1)
        d = np.unpackbits(documents.view(np.uint8), axis=1)
        return -(q[:, None, :] != d[None, :, :]).sum(axis=2)  # minus the Hamming distance
    kind = np.float64 if precision == "float32" else np.int64
    return queries.astype(kind) @ documents.T.astype(kind)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None)
    p.add_argument("--documents", type=int, default=600)
    p.add_argument("--out", default="tools/results/quantization.json")
    args = p.parse_args()
    from jaxembed.api import Embedder

    embedder = Embedder.from_pretrained(args.model)
    documents, queries = labelled_set(args.documents)
    results = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": cpu_model(),
        "model": embedder.card.name,
        "documents": len(documents),
        "recall_at_10": {},
        "bytes_per_vector": {},
    }
    for precision in ("float32", "int8", "binary"):  # uint8 ranks as int8 (a shift of 128)
        d = embedder.embed(documents, truncate=True, precision=precision)
        q = embedder.embed(queries, truncate=True, precision=precision)
        results["recall_at_10"][precision] = round(recall_at(scores_for(precision, q, d), 10), 3)
        results["bytes_per_vector"][precision] = int(d[0].nbytes)
    embedder.close()
    print(results)
    write_results(args.out, results)


if __name__ == "__main__":
    main()
