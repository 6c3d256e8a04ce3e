"""`EmbeddingService`: one model's whole embedding pipeline behind one async call.

    result = await service.embed(EmbedJob(inputs, EmbedOptions(...)))

It owns the model's text and image batchers, the embedding cache, LoRA
adapter pinning, prompts and instructions, chunking of over-long inputs,
multimodal fusion and video means, matryoshka truncation — everything between
"validated inputs" and "vectors". The HTTP server (parsing, auth, media
fetching, error mapping, response encoding) and the Python API
(`Embedder.embed`, which runs this service on a background loop) both call it,
so both produce the same vectors for the same inputs.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import numpy as np

from jaxembed.engine.aio import gather_or_cancel
from jaxembed.engine.batcher import Batcher, BatchStats, FaultHook, RequestProgress
from jaxembed.engine.cache import EmbeddingCache, assemble
from jaxembed.engine.calibration import Calibration
from jaxembed.engine.device_share import DeviceShare
from jaxembed.engine.embedder import Embedder
from jaxembed.engine.jobs import (
    AdapterRef,
    EmbedItem,
    EmbedJob,
    EmbedOptions,
    EmbedResult,
    ScoreJob,
    ScoreOptions,
    ScoreResult,
    TextInputs,
)
from jaxembed.engine.multimodal import CacheHook, MediaEmbedder, check_items
from jaxembed.engine.qwen_vl import FusedWorkload
from jaxembed.engine.scores import activate
from jaxembed.engine.tasks import resolve_task
from jaxembed.engine.vision import ImageWorkload
from jaxembed.errors import DeadlineError, InvalidInputError, MediaError, RequestTooLargeError
from jaxembed.media import MediaLimits, decode_image
from jaxembed.pooling import l2_normalize_rows, truncate_dimensions
from jaxembed.quantization import check_precision, quantize

# Tokenising more characters than this moves off the event loop (HF tokenizers release the GIL).
INLINE_TOKENIZE_CHARS = 4096
# Calibrating int8 ranges runs behind requests of the default priority (0).
CALIBRATION_PRIORITY = 10


@dataclasses.dataclass(frozen=True)
class QueueLimits:
    """How much work may wait per batcher, and how it is scheduled (engine/scheduler.py)."""

    max_queued_requests: int = 1024
    max_queued_tokens: int = 4 * 2**20
    aging_seconds: float = 1.0
    step_batches: int = 8


@dataclasses.dataclass(frozen=True)
class ServiceConfig:
    queue: QueueLimits = QueueLimits()
    cache_bytes: int = 0  # embedding cache (0: off)
    max_request_tokens: int | None = None  # tokens of one job's texts (None: no limit)
    max_media_items: int = 64  # images + videos per job
    # What decoding one image or video may cost (jaxembed/media.py).
    max_image_pixels: int = MediaLimits.max_image_pixels
    max_video_seconds: float = MediaLimits.max_video_seconds
    max_video_frames: int = MediaLimits.max_video_frames
    max_decode_seconds: float = MediaLimits.max_decode_seconds
    decode_workers: int = 4
    quantization_ranges: str | None = None  # int8/uint8 ranges file (default: calibrated)

    @property
    def media_limits(self) -> MediaLimits:
        return MediaLimits(
            max_image_pixels=self.max_image_pixels,
            max_video_seconds=self.max_video_seconds,
            max_video_frames=self.max_video_frames,
            max_decode_seconds=self.max_decode_seconds,
        )


@dataclasses.dataclass(frozen=True)
class ServiceHooks:
    """Observers and test hooks (metrics live at the edge, not in the engine)."""

    on_batch: Callable[[BatchStats], None] | None = None
    on_cache: CacheHook | None = None  # (hits, misses) of every lookup
    fault_hook: FaultHook | None = None


class EmbeddingService:
    def __init__(
        self,
        embedder: Embedder,
        config: ServiceConfig = ServiceConfig(),
        *,
        name: str | None = None,
        share: DeviceShare | None = None,
        hooks: ServiceHooks = ServiceHooks(),
    ):
        """`share`: devices shared with other services (fair turns per batch); `name`
        identifies this model there and in logs (default: the card's name)."""
        self.embedder = embedder
        self.card = embedder.card
        self.config = config
        self.name = name or embedder.card.name
        self.hooks = hooks
        queue = dataclasses.asdict(config.queue)
        common = dict(queue, on_batch=hooks.on_batch, share=share)
        self.text = Batcher(
            embedder, fault_hook=hooks.fault_hook, name=f"{self.name}/text", **common
        )
        self.images: Batcher | None = None
        if embedder.images is not None:  # images share the device with text, not batches
            workload = ImageWorkload(embedder.images)
            self.images = Batcher(workload, name=f"{self.name}/images", **common)
        self.cache = EmbeddingCache(config.cache_bytes)
        model = embedder.model
        self.calibration = Calibration(
            (str(model.model_dir), self.card.name, str(model.dtype)),
            self.card.dimensions,
            self.card.normalize,
            config.quantization_ranges,
        )
        self.fused: Batcher | None = None  # a vision-language model's items (engine/qwen_vl.py)
        if embedder.fused is not None:
            workload = FusedWorkload(embedder.fused, embedder.grid.token_budget)
            self.fused = Batcher(workload, name=f"{self.name}/vl", **common)
        self.media = MediaEmbedder(
            self.card,
            embedder.images,
            self.images,
            config.media_limits,
            cache=self.cache,
            on_cache=hooks.on_cache,
            decode_workers=config.decode_workers,
        )

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def batchers(self) -> list[Batcher]:
        return [b for b in (self.text, self.images, self.fused) if b is not None]

    @property
    def _item_batcher(self) -> Batcher:
        """Where this model's embedding requests queue: its text rows, or a vision-language
        model's items."""
        return self.fused or self.text

    def start(self, *, warmup: bool = True, progress=None) -> None:
        """Start the batchers' threads; warm-up compiles every bucket first (off the caller)."""
        for b in self.batchers:
            b.start(warmup=warmup, warmup_progress=progress)

    def close(self, timeout: float = 30.0) -> bool:
        """Stop accepting, finish queued work (up to `timeout` s). True if everything drained."""
        drained = all([b.close(timeout) for b in self.batchers])
        self.media.close()
        return drained

    @property
    def warm(self) -> bool:
        return all(b.ready.is_set() for b in self.batchers)

    def unhealthy_reason(self) -> str | None:
        """Why the engine cannot serve now (e.g. a lost follower host), or None."""
        return self.embedder.unhealthy_reason()

    @property
    def queued_requests(self) -> int:
        return sum(b.queued_requests for b in self.batchers)

    @property
    def queued_tokens(self) -> int:
        return sum(b.queued_tokens for b in self.batchers)

    @property
    def active_requests(self) -> int:
        return sum(b.active_requests for b in self.batchers)

    # -- the pipeline -------------------------------------------------------------------------

    async def embed(self, job: EmbedJob, progress: RequestProgress | None = None) -> EmbedResult:
        """Vectors for every input of `job`, in order; library errors name the bad input.

        `progress` counts the rows the device finished (a caller that gives up reports it).
        """
        self.check_kind("embedding")
        o = resolve_task(self.card, job.options)
        self._check_sparse(o)
        self.embedder.check_dimensions(o.dimensions)
        self._check_normalize(o.normalize)
        check_precision(o.precision, o.dimensions or self.card.dimensions)
        self.embedder.check_instruction(o.instruction)
        if job.multimodal:
            self.check_items(job.inputs)
        progress = progress or RequestProgress()
        if self.embedder.fused is not None:
            vectors, tokens = await self._embed_fused(job, o, progress)
            return EmbedResult(await self.encode(vectors, o.precision), tokens)
        async with self._adapter(o.adapter) as (namespace, slot):

            async def texts(inputs: TextInputs) -> tuple[np.ndarray, list[int]]:
                return await self._embed_texts(inputs, o, namespace, slot, progress)

            if job.multimodal:
                vectors, tokens = await self.media.embed(
                    job.inputs, texts, priority=o.priority, frames=o.video_frames
                )
            else:
                vectors, counts = await texts(job.inputs)
                tokens = sum(counts)
        vectors = truncate_dimensions(vectors, o.dimensions, self.card.normalize)
        if o.normalize and not self.card.normalize:
            vectors = l2_normalize_rows(vectors)
        return EmbedResult(await self.encode(vectors, o.precision), tokens)

    async def score(self, job: ScoreJob, progress: RequestProgress | None = None) -> ScoreResult:
        """A reranker's scores of every (query, document) pair of `job`, in order.

        Pairs are token rows like texts: they share the text batcher's buckets, packing,
        priorities, admission and cache with every other request for this model.
        """
        self.check_kind("reranker")
        o = job.options
        progress = progress or RequestProgress()
        with progress.timed("tokenize"):
            rows = await self._off_loop(
                [d for _, d in job.pairs],
                lambda: self.embedder.pairs.encode(job.pairs, o),
            )
        self._check_tokens(rows)
        logits = await self._embed_cached(rows, o, "", 0, progress)
        scores = logits if o.raw else activate(logits, self.card.score_activation)
        return ScoreResult(scores[:, 0] if scores.shape[1] == 1 else scores, sum(map(len, rows)))

    async def _embed_fused(
        self, job: EmbedJob, o: EmbedOptions, progress: RequestProgress
    ) -> tuple[np.ndarray, int]:
        """A vision-language model's job (engine/qwen_vl.py): images and videos decoded under
        the media limits and prepared (resized, patchified, tokenized) off the event loop,
        then batched with other requests' items by the model's vision-language batcher."""
        unsupported = [
            name
            for name, used in (
                ("lora_path", o.adapter is not None),
                ("chunking", o.chunking),
            )
            if used
        ]
        if unsupported:
            raise InvalidInputError(
                f"{self.name} does not take {', '.join(unsupported)}", param=unsupported[0]
            )
        inputs = [job.inputs] if isinstance(job.inputs, str) else list(job.inputs)
        if not all(isinstance(x, str | EmbedItem) for x in inputs):
            raise InvalidInputError(f"{self.name} embeds texts and items, not token ids")
        loop = asyncio.get_running_loop()
        items = await gather_or_cancel(  # images decode side by side, off the event loop
            [
                loop.run_in_executor(None, self._decoded, i, x, o.video_frames)
                for i, x in enumerate(inputs)
            ]
        )
        instruction = self.embedder.vl_instruction(o.prompt_name, o.instruction)
        with progress.timed("preprocess"):
            rows = await loop.run_in_executor(None, self.embedder.fused.prepare, items, instruction)
        self._check_tokens([r.ids for r in rows])
        tokens = sum(len(r.ids) for r in rows)
        self._admit(tokens, o.deadline)
        vectors = await self.fused.embed(rows, priority=o.priority, progress=progress)
        return truncate_dimensions(vectors, o.dimensions, self.card.normalize), tokens

    def _decoded(self, index: int, item: EmbedItem | str, frames: int | None) -> EmbedItem:
        """`item` with its image and video decoded under the media limits (the video sampled
        as the model's recipe does, at most `frames` frames; errors name the item)."""
        if isinstance(item, str):
            return EmbedItem(text=item)
        engine = self.embedder.fused
        if item.video is not None and not engine.takes_video:
            raise InvalidInputError(
                f"input[{index}]: {self.name} embeds text and images, not video",
                param="input",
            )
        decoders = {
            "image": lambda data: decode_image(data, self.media.limits),
            "video": lambda data: engine.decode_video(data, self.media.limits, frames),
        }
        for kind, decode in decoders.items():
            data = getattr(item, kind)
            if not isinstance(data, bytes | bytearray):
                continue
            try:
                item = dataclasses.replace(item, **{kind: decode(data)})
            except MediaError as e:
                raise MediaError(f"input[{index}].{kind}: {e}", code=e.code, index=index) from None
        return item

    def _check_sparse(self, o: EmbedOptions) -> None:
        """A SPLADE vector is one weight per vocabulary entry: no matryoshka width, no
        quantization (its sparse form is what shrinks it: jaxembed/engine/sparse.py)."""
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

    def _check_normalize(self, normalize: bool | None) -> None:
        if normalize is False and self.card.normalize:
            raise InvalidInputError(
                f"normalize=false is not supported for {self.name}: its embeddings are "
                "normalised inside the compiled program (the model card says so)",
                param="normalize",
            )

    def check_capacity(self) -> None:
        """OverloadedError now if this model's queue is full (before any work on a request:
        a vision-language model's items queue on their own batcher)."""
        self._item_batcher.check_capacity()

    def check_items(self, items: Sequence[Any], model: str | None = None) -> None:
        """Refuse multimodal items this model cannot embed (before anything is fetched)."""
        check_items(items, self.card, self.config.max_media_items, model or self.name)

    async def tokenize(self, inputs: TextInputs, options: EmbedOptions) -> list[np.ndarray]:
        """Token ids per input exactly as `embed` would run them (prompt, truncation)."""
        token_lists = await self._off_loop(
            inputs,
            lambda: self.embedder.tokenize(
                inputs,
                truncate=options.truncate,
                truncation_direction=options.truncation_direction,
                prompt_name=options.prompt_name,
                instruction=options.instruction,
                max_tokens=options.max_tokens,
                add_special_tokens=options.add_special_tokens,
            ),
        )
        self._check_tokens(token_lists)
        return token_lists

    async def _embed_texts(
        self,
        inputs: TextInputs,
        o: EmbedOptions,
        namespace: str,
        slot: int,
        progress: RequestProgress,
    ) -> tuple[np.ndarray, list[int]]:
        """Texts or token ids → (vectors, tokens per input): windows pooled back when chunking."""
        if not o.chunking:
            with progress.timed("tokenize"):
                token_lists = await self.tokenize(inputs, o)
            vectors = await self._embed_cached(token_lists, o, namespace, slot, progress)
            return vectors, [len(t) for t in token_lists]
        with progress.timed("tokenize"):
            plan = await self._off_loop(
                inputs,
                lambda: self.embedder.tokenize_windows(
                    inputs, prompt_name=o.prompt_name, instruction=o.instruction
                ),
            )
        self._check_tokens(plan.windows)
        vectors = await self._embed_cached(plan.windows, o, namespace, slot, progress)
        return plan.combine(vectors, self.card.normalize), plan.token_counts

    async def _embed_cached(
        self,
        token_lists: list[np.ndarray],
        o: EmbedOptions | ScoreOptions,
        namespace: str,
        slot: int,
        progress: RequestProgress,
    ) -> np.ndarray:
        """Rows seen before come from the cache; only distinct new sequences reach the device."""
        lookup = self.cache.lookup(token_lists, namespace=namespace)
        computed = np.empty((0, self.card.dimensions), dtype=np.float32)
        progress.rows_done += len(lookup.hits)
        if lookup.to_compute:
            rows = [token_lists[i] for i in lookup.to_compute]
            self._admit(sum(len(t) for t in rows), o.deadline)
            computed = await self.text.embed(
                rows, priority=o.priority, adapter_slot=slot, progress=progress
            )
            self.cache.store([lookup.keys[i] for i in lookup.to_compute], computed)
        if self.hooks.on_cache:
            self.hooks.on_cache(len(lookup.hits), len(token_lists) - len(lookup.hits))
        return assemble(lookup, computed, self.card.dimensions)

    def _admit(self, tokens: int, deadline: float | None) -> None:
        """Refuse up front what cannot finish by the deadline even with the device to itself,
        at the throughput measured so far (nothing is refused before it is measured)."""
        if deadline is None:
            return
        expected = self._item_batcher.expected_seconds(tokens)
        left = deadline - time.monotonic()
        if expected is not None and expected > left:
            raise DeadlineError(tokens, expected, left)

    def _check_tokens(self, token_lists: Sequence[np.ndarray]) -> None:
        limit = self.config.max_request_tokens
        total = sum(len(t) for t in token_lists)
        if limit is not None and total > limit:
            raise RequestTooLargeError(
                f"the request has {total} tokens; the maximum per request is {limit}"
            )

    @contextlib.asynccontextmanager
    async def _adapter(self, ref: AdapterRef | None) -> AsyncIterator[tuple[str, int]]:
        """(cache namespace, LoRA slot) of the job's adapter, pinned while the job runs."""
        if ref is None:
            yield "", 0
            return
        loop = asyncio.get_running_loop()  # loading reads files and copies to the device
        slot = await loop.run_in_executor(None, self.embedder.adapter_slot, ref.name, ref.path)
        bank = self.embedder.lora_bank
        try:
            yield bank.identity(ref.name), slot  # pinned: the identity is stable here
        finally:
            bank.release(ref.name)

    @staticmethod
    async def _off_loop(inputs: Any, work: Callable[[], Any]) -> Any:
        """Tokenise short inputs inline, long ones on a worker thread (the loop stays free)."""
        if isinstance(inputs, str):
            size = len(inputs)
        elif isinstance(inputs, Sequence):
            size = sum(len(x) if isinstance(x, str) else 1 for x in inputs)
        else:
            size = 0  # not inputs at all: tokenize refuses it at once
        if size <= INLINE_TOKENIZE_CHARS:
            return work()
        return await asyncio.get_running_loop().run_in_executor(None, work)
