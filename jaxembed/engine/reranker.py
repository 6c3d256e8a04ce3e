"""`Reranker`: the synchronous in-process API of a reranker — pairs in, scores out.

    reranker = Reranker.from_pretrained("cross-encoder-dir")
    reranker.rank("what is jax?", documents, top_n=3)

It runs on the same engine and service as `Embedder` (buckets, packing, the
background event loop), so the server and the Python API score identically.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxembed.engine.embedder import Embedder
from jaxembed.engine.jobs import ScoreJob, ScoreOptions
from jaxembed.engine.scores import ranking
from jaxembed.errors import InvalidInputError, ModelLoadError


class Reranker:
    def __init__(self, embedder: Embedder):
        if embedder.card.kind != "reranker":
            raise ModelLoadError(
                f"{embedder.card.name} is an embedding model, not a reranker (use Embedder)"
            )
        self.engine = embedder
        self.card = embedder.card

    @classmethod
    def from_pretrained(cls, spec: str | os.PathLike, **options: Any) -> Reranker:
        """Load a reranker (directory or card name); `options` as `Embedder.from_pretrained`."""
        return cls(Embedder.from_pretrained(spec, **options))

    def predict(
        self,
        pairs: Sequence[tuple[str, str]],
        *,
        truncate: bool = True,
        truncation_direction: str = "right",
        max_document_tokens: int | None = None,
        instruction: str | None = None,
        raw: bool = False,
        priority: int = 0,
    ) -> np.ndarray:
        """Scores of (query, document) pairs: [N] for one label, [N, labels] otherwise
        (sentence-transformers' `CrossEncoder.predict`; `raw` gives the logits).

        Over-long documents are cut (`truncate=False` refuses them instead), as
        CrossEncoder truncates by default."""
        pairs = [tuple(p) for p in pairs]
        if not pairs or any(len(p) != 2 for p in pairs):
            raise InvalidInputError("pairs must be a non-empty list of (query, document)")
        options = ScoreOptions(
            priority=priority,
            truncate=truncate,
            truncation_direction=truncation_direction,
            max_document_tokens=max_document_tokens,
            instruction=instruction,
            raw=raw,
        )
        job = ScoreJob(pairs, options)
        return self.engine.call_service(lambda service: service.score(job)).scores

    def score(self, query: str, documents: Sequence[str], **options: Any) -> np.ndarray:
        """Each document's score against `query`, in document order."""
        if isinstance(documents, str) or not documents:
            raise InvalidInputError("documents must be a non-empty list of strings")
        return self.predict([(query, d) for d in documents], **options)

    def rank(
        self,
        query: str,
        documents: Sequence[str],
        *,
        top_n: int | None = None,
        return_documents: bool = False,
        **options: Any,
    ) -> list[dict[str, Any]]:
        """[{"index", "score", "document"?}] best first (a one-label reranker)."""
        if self.card.dimensions != 1:
            raise InvalidInputError(
                f"{self.card.name} has {self.card.dimensions} labels; rank needs one relevance "
                "score per document (use predict for per-label scores)"
            )
        scores = self.score(query, documents, **options)
        results = []
        for i in ranking(scores, top_n):
            entry: dict[str, Any] = {"index": i, "score": float(scores[i])}
            if return_documents:
                entry["document"] = documents[i]
            results.append(entry)
        return results

    def close(self) -> None:
        self.engine.close()
