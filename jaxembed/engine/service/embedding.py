"""`EmbeddingService`: one model's whole embedding pipeline behind one async call.

    result = await service.embed(EmbedJob(inputs, EmbedOptions(...)))

It is the input and output half of a model: every check of a job, prompts and
instructions, tokenisation (batched across concurrent requests), chunking of
over-long inputs, pair encoding for rerankers, then — once the device half
(`RowBackend`: service/rows.py) has turned the rows into vectors — the windows'
means, matryoshka truncation, normalisation and quantized encodings. It needs no
JAX: the HTTP front-ends run it in their own processes over a remote device half,
the server's single process and the Python API (`Embedder.embed`) over a local one,
so every path produces the same vectors for the same inputs.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxembed.engine.inputs.items import check_items
from jaxembed.engine.inputs.queue import TokenizeQueue
from jaxembed.engine.inputs.text import ModelInputs, classify_inputs
from jaxembed.engine.request.jobs import (
    EmbedJob,
    EmbedOptions,
    EmbedResult,
    ScoreJob,
    ScoreResult,
    TextInputs,
)
from jaxembed.engine.request.limits import check_request_tokens
from jaxembed.engine.request.progress import RequestProgress
from jaxembed.engine.request.tasks import resolve_task
from jaxembed.engine.service.backend import EngineFacts, EngineStatus, RowBackend, RowOptions
from jaxembed.engine.service.calibration import Calibration
from jaxembed.engine.service.config import ServiceConfig
from jaxembed.engine.service.scores import activate
from jaxembed.engine.service.slices import embed_in_slices, sliced
from jaxembed.errors import InvalidInputError
from jaxembed.quantization import check_precision, quantize
from jaxembed.vectors import l2_normalize_rows, truncate_dimensions

# Calibrating int8 ranges runs behind requests of the default priority (0).
CALIBRATION_PRIORITY = 10


class EmbeddingService:
    def __init__(
        self,
        inputs: ModelInputs,
        backend: RowBackend,
        config: ServiceConfig | None = None,
        *,
        name: str | None = None,
        calibration_key: tuple[str, ...] = (),
    ):
        """`backend`: the device half (a local RowEngine, or a remote one); `name` identifies
        this model in logs (default: the card's name); `calibration_key`: what identifies
        the model's int8 calibration (its directory, card and dtype)."""
        self.inputs = inputs
        self.backend = backend
        self.card = inputs.card
        self.config = config = config or ServiceConfig()
        self.name = name or inputs.card.name
        self.calibration = Calibration(
            calibration_key or (str(inputs.model_dir), self.card.name),
            self.card.dimensions,
            self.card.normalize,
            config.quantization_ranges,
        )
        self.tokenizing = TokenizeQueue(inputs, name=self.name)

    # -- lifecycle and state ------------------------------------------------------------------

    def start(self, *, warmup: bool = True, progress=None) -> None:
        """Start the device half (warm-up compiles every bucket first, off the caller)."""
        self.backend.start(warmup=warmup, progress=progress)

    def close(self, timeout: float = 30.0) -> bool:
        """Stop accepting, finish queued work (up to `timeout` s). True if everything drained."""
        drained = self.backend.close(timeout)
        self.tokenizing.close()
        return drained

    @functools.cached_property
    def facts(self) -> EngineFacts:
        return self.backend.facts()

    def status(self) -> EngineStatus:
        return self.backend.status()

    @property
    def warm(self) -> bool:
        return self.backend.status().warm

    def unhealthy_reason(self) -> str | None:
        """Why the engine cannot serve now (e.g. a lost follower host), or None."""
        return self.backend.unhealthy()

    def check_capacity(self) -> None:
        """OverloadedError now if this model's queue is full (before any work on a request)."""
        self.backend.check_capacity()

    def check_kind(self, kind: str) -> None:
        """Refuse work of the other kind: a reranker does not embed, an embedder does not score."""
        if self.card.kind == kind:
            return
        if kind == "reranker":
            message = f"{self.name} is an embedding model; it does not score pairs"
        else:
            message = (
                f"{self.name} is a reranker: it scores (query, document) pairs, it does not embed"
            )
        raise InvalidInputError(message, param="model", code="wrong_model_kind")

    def check_items(self, items: Sequence[Any], model: str | None = None) -> None:
        """Refuse multimodal items this model cannot embed (before anything is fetched)."""
        check_items(items, self.card, self.config.max_media_items, model or self.name)

    # -- the pipeline -------------------------------------------------------------------------

    async def embed(self, job: EmbedJob, progress: RequestProgress | None = None) -> EmbedResult:
        """Vectors for every input of `job`, in order; library errors name the bad input.

        `progress` counts the rows the device finished (a caller that gives up reports it).
        """
        o = self.check_job(job)
        progress = progress or RequestProgress()
        counts = None
        if job.multimodal or self.card.vl_template:
            job = dataclasses.replace(job, options=o)
            vectors, tokens = await self.backend.embed_items(
                job, progress, lambda texts: self.embed_texts(texts, o, progress)
            )
        else:
            vectors, counts = await self.embed_texts(job.inputs, o, progress)
            tokens = sum(counts)
        vectors = truncate_dimensions(vectors, o.dimensions, self.card.normalize)
        if o.normalize and not self.card.normalize:
            vectors = l2_normalize_rows(vectors)
        return EmbedResult(await self.encode(vectors, o.precision), tokens, counts)

    def check_job(self, job: EmbedJob) -> EmbedOptions:
        """Everything about a job that can be refused before any work, and its options with a
        named task resolved into its adapter and prompt."""
        self.check_kind("embedding")
        o = resolve_task(self.card, job.options)
        self._check_sparse(o)
        self.inputs.check_dimensions(o.dimensions)
        self._check_normalize(o.normalize)
        check_precision(o.precision, o.dimensions or self.card.dimensions)
        self.inputs.check_instruction(o.instruction)
        if job.multimodal:
            self.check_items(job.inputs)
        return o

    async def score(self, job: ScoreJob, progress: RequestProgress | None = None) -> ScoreResult:
        """A reranker's scores of every (query, document) pair of `job`, in order.

        Pairs are token rows like texts: they share the text batcher's buckets, packing,
        priorities, admission and cache with every other request for this model.
        """
        self.check_kind("reranker")
        o = job.options
        progress = progress or RequestProgress()
        with progress.timed("tokenize"):
            rows = await self.tokenizing.run(lambda: self.inputs.pairs.encode(job.pairs, o))
        self._check_tokens(rows)
        logits = await self.backend.embed_rows(
            rows, RowOptions(o.priority, None, o.deadline), progress
        )
        scores = logits if o.raw else activate(logits, self.card.score_activation)
        return ScoreResult(scores[:, 0] if scores.shape[1] == 1 else scores, sum(map(len, rows)))

    async def embed_texts(
        self, inputs: TextInputs, o: EmbedOptions, progress: RequestProgress
    ) -> tuple[np.ndarray, list[int]]:
        """Texts or token ids → (full-width vectors, tokens per input): windows pooled back
        when chunking. Multimodal items' texts come through here too."""
        row_options = RowOptions(o.priority, o.adapter, o.deadline)
        if self._slices_pay(inputs, o):
            return await self._embed_sliced(inputs, o, row_options, progress)
        if not o.chunking:
            with progress.timed("tokenize"):
                token_lists = await self.tokenize(inputs, o)
            vectors = await self.backend.embed_rows(token_lists, row_options, progress)
            return vectors, [len(t) for t in token_lists]
        with progress.timed("tokenize"):
            plan = await self.tokenizing.run(
                lambda: self.inputs.tokenize_windows(
                    inputs, prompt_name=o.prompt_name, instruction=o.instruction
                )
            )
        self._check_tokens(plan.windows)
        vectors = await self.backend.embed_rows(plan.windows, row_options, progress)
        return plan.combine(vectors, self.card.normalize), plan.token_counts

    def _slices_pay(self, inputs: TextInputs, o: EmbedOptions) -> bool:
        """A large text request on an accelerator: tokenising its next slice overlaps the
        device's work on the last (on CPU devices both would share the same cores: measured
        slower, docs/benchmarks.md)."""
        if o.chunking or not isinstance(inputs, list) or not sliced(inputs):
            return False
        return not self.facts.host_devices and classify_inputs(inputs)[0] == "text"

    async def _embed_sliced(
        self, texts: list[str], o: EmbedOptions, row_options: RowOptions, progress
    ) -> tuple[np.ndarray, list[int]]:
        """A large request's texts in slices (service/slices.py), every text checked first so
        that a bad one refuses the request before any slice runs."""
        prompted = self.inputs.apply_prompt(texts, o.prompt_name, o.instruction)
        self.inputs.tokenizer.check_texts(prompted, o.truncation_direction)

        async def tokenize(part: list[str]) -> list[np.ndarray]:
            with progress.timed("tokenize"):
                return await self.tokenizing.tokenize(part, o)

        async def embed_rows(rows: list[np.ndarray]) -> np.ndarray:
            return await self.backend.embed_rows(rows, row_options, progress)

        return await embed_in_slices(texts, tokenize, embed_rows, self.config.max_request_tokens)

    async def tokenize(self, inputs: TextInputs, options: EmbedOptions) -> list[np.ndarray]:
        """Token ids per input exactly as `embed` would run them (prompt, truncation)."""
        token_lists = await self.tokenizing.tokenize(inputs, options)
        self._check_tokens(token_lists)
        return token_lists

    async def encode(self, vectors: np.ndarray, precision: str) -> np.ndarray:
        """Float vectors of this model (as `embed` returned them) in another precision; an API
        asking for several precisions embeds once and encodes each."""
        check_precision(precision, vectors.shape[1])
        if precision in ("int8", "uint8"):
            await self.calibration.ensure(self._calibration_vectors)
            return quantize(vectors, precision, self.calibration.ranges(vectors.shape[1]))
        return quantize(vectors, precision)

    async def _calibration_vectors(self, texts: list[str]) -> np.ndarray:
        """Full-width float vectors of the calibration corpus, behind interactive work."""
        job = EmbedJob(texts, EmbedOptions(truncate=True, priority=CALIBRATION_PRIORITY))
        return (await self.embed(job)).vectors

    # -- checks -------------------------------------------------------------------------------

    def _check_sparse(self, o: EmbedOptions) -> None:
        """A SPLADE vector is one weight per vocabulary entry: no matryoshka width, no
        quantization (its sparse form is what shrinks it: engine/service/sparse.py)."""
        if not self.card.sparse:
            return
        if o.dimensions is not None:
            raise InvalidInputError(
                f"{self.name} is a sparse (SPLADE) model: its vectors have one weight per "
                "vocabulary entry and cannot be truncated; send no `dimensions`",
                param="dimensions",
            )
        if o.precision != "float32":
            raise InvalidInputError(
                f"{self.name} is a sparse (SPLADE) model: ask for its sparse form, not a "
                f"{o.precision} quantization",
                param="embedding_type",
            )

    def _check_normalize(self, normalize: bool | None) -> None:
        if normalize is False and self.card.normalize:
            raise InvalidInputError(
                f"normalize=false is not supported for {self.name}: its embeddings are "
                "normalised inside the compiled program (the model card says so)",
                param="normalize",
            )

    def _check_tokens(self, token_lists: Sequence[np.ndarray]) -> None:
        check_request_tokens(sum(map(len, token_lists)), self.config.max_request_tokens)
