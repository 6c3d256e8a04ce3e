"""The synchronous in-process API: `Embedder` (texts, token ids, images, videos → vectors) and
`Reranker` (query, document pairs → scores), each on top of the same `EmbeddingService`
the server runs, so both APIs give the same bits.

    embedder = Embedder.from_pretrained()          # the embedded all-MiniLM-L6-v2
    vectors = embedder.embed(["a text", "another"])
    reranker = Reranker.from_pretrained("cross-encoder-dir")
    reranker.rank("what is jax?", documents, top_n=3)

`Embedder.embed` runs the service on a background event loop (`jaxembed.aio.BackgroundLoop`),
so it works from plain scripts and from inside a running loop (Jupyter, an async app) alike;
concurrent calls from several threads share device batches as requests do in the server.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import numpy as np
from PIL import Image

from jaxembed.aio import BackgroundLoop
from jaxembed.engine.inputs.text import Inputs
from jaxembed.engine.model import EngineModel
from jaxembed.engine.request.jobs import (
    AdapterRef,
    EmbedItem,
    EmbedJob,
    EmbedOptions,
    ScoreJob,
    ScoreOptions,
)
from jaxembed.engine.request.limits import QueueLimits
from jaxembed.engine.service.config import ServiceConfig
from jaxembed.engine.service.embedding import EmbeddingService
from jaxembed.engine.service.rows import local_service
from jaxembed.engine.service.scores import ranking
from jaxembed.errors import InvalidInputError, ModelLoadError

T = TypeVar("T")


class Embedder(EngineModel):
    """A loaded model (everything `EngineModel` is) with the synchronous embedding API."""

    _service: EmbeddingService | None = None
    _loop: BackgroundLoop | None = None
    _starting = threading.Lock()  # first calls from several threads build one service

    def service(self) -> EmbeddingService:
        """The `EmbeddingService` that `embed`, `embed_images` and `embed_video` run on (built
        on first use, on a background event loop): the same pipeline the server runs."""
        with self._starting:
            if self._service is None:
                service = local_service(self, ServiceConfig(queue=QueueLimits.unbounded()))
                service.start(warmup=False)  # buckets compile on first use
                self._loop = BackgroundLoop()
                self._service = service  # last: a service seen set has its loop
        return self._service

    def close(self) -> None:
        """Stop the background service of `embed` (if it was started); the engine stays usable."""
        if self._service is not None:
            self._service.close(timeout=5)
            self._loop.close()
            self._service = self._loop = None

    def call_service(self, call: Callable[[EmbeddingService], Awaitable[T]]) -> T:
        """Run `call(service)` (a coroutine on this model's service) to completion from
        synchronous code; what `embed` and `Reranker.score` are made of."""
        service = self.service()
        return self._loop.run(call(service))

    def _run_job(self, inputs, **options) -> np.ndarray:
        job = EmbedJob(inputs, EmbedOptions(**options))
        return self.call_service(lambda service: service.embed(job)).vectors

    def embed(
        self,
        inputs: Inputs,
        *,
        truncate: bool = False,
        truncation_direction: str = "right",
        dimensions: int | None = None,
        prompt_name: str | None = None,
        instruction: str | None = None,
        adapter: str | None = None,
        task: str | None = None,
        chunking: bool = False,
        priority: int = 0,
        precision: str = "float32",
    ) -> np.ndarray:
        """Embed texts or token ids → [N, dimensions] float32, rows in input order.

        `prompt_name` picks a prompt of the card (e.g. "query"); `instruction`
        instead fills the card's instruction template (decoder embedders);
        `adapter` names a LoRA adapter loaded with `adapter_slot`; `task` one of the
        model's built-in task adapters with its prompt (jina-v3); `chunking` embeds
        an over-long input as windows pooled by token count (instead of `truncate`);
        `precision` int8/uint8/binary/ubinary quantizes (jaxembed/quantization.py).
        Thread-safe: concurrent calls share device batches, as requests do in the server.
        """
        return self._run_job(
            inputs,
            truncate=truncate,
            truncation_direction=truncation_direction,
            dimensions=dimensions,
            prompt_name=prompt_name,
            instruction=instruction,
            adapter=None if adapter is None else AdapterRef(adapter),
            task=task,
            chunking=chunking,
            priority=priority,
            precision=precision,
        )

    # -- images and videos (models with a vision tower) ----------------------------------------

    def embed_items(self, items: Sequence, *, dimensions: int | None = None, **options):
        """Multimodal items (`jaxembed.engine.request.jobs.EmbedItem`: text, image and/or
        video; images and videos as bytes or decoded) → [N, dimensions], one fused vector per
        item. `options`: further `EmbedOptions` fields (e.g. video_frames, prompt_name)."""
        return self._run_job(list(items), dimensions=dimensions, **options)

    def embed_images(
        self, images: Sequence[Image.Image | bytes], *, dimensions: int | None = None
    ) -> np.ndarray:
        """Images (decoded, any size or mode, or encoded file bytes) → [N, dimensions] float32."""
        return self._run_job([EmbedItem(image=image) for image in images], dimensions=dimensions)

    def embed_video(
        self,
        video: Sequence[Image.Image] | bytes,
        *,
        dimensions: int | None = None,
        frames: int | None = None,
    ) -> np.ndarray:
        """One video (sampled frames, or an encoded file sampled to `frames`, default the
        card's) → one [dimensions] vector: the mean frame embedding — or, for a
        vision-language model, the video read through its decoder (a file sampled as its
        recipe says, `frames` capping the count; frames given are taken as sampled at the
        recipe's rate)."""
        item = EmbedItem(video=video if isinstance(video, bytes) else list(video))
        return self._run_job([item], dimensions=dimensions, video_frames=frames)[0]


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
