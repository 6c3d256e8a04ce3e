"""`RowEngine`: the device half of a model's service — what runs in the process that owns the
devices. It takes token rows (already tokenised, wherever that happened) and whole
multimodal jobs (media as bytes), and owns the model's batchers, the embedding cache, LoRA
adapter pinning, deadline admission and the decoding of images and videos.

The input half (`EmbeddingService`, service/embedding.py) talks to it through `RowBackend`:
in one process directly, across processes through the engine transport (server/engine_*).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator

import numpy as np

from jaxembed.aio import gather_or_cancel
from jaxembed.engine.batching.batcher import Batcher
from jaxembed.engine.batching.cache import EmbeddingCache, assemble
from jaxembed.engine.batching.device_share import DeviceShare
from jaxembed.engine.device.compile_cache import cache_counts
from jaxembed.engine.model import EngineModel, TextWorkload
from jaxembed.engine.request.jobs import AdapterRef, EmbedItem, EmbedJob, EmbedOptions
from jaxembed.engine.request.limits import check_request_tokens
from jaxembed.engine.request.progress import RequestProgress
from jaxembed.engine.service.backend import (
    EngineFacts,
    EngineStatus,
    RowOptions,
    ServiceHooks,
    TextPath,
)
from jaxembed.engine.service.config import ServiceConfig
from jaxembed.engine.service.embedding import EmbeddingService
from jaxembed.engine.service.multimodal import MediaEmbedder
from jaxembed.engine.workloads.qwen_vl import FusedWorkload
from jaxembed.engine.workloads.vision import ImageWorkload
from jaxembed.errors import DeadlineError, InvalidInputError, MediaError
from jaxembed.media import decode_image


class RowEngine:
    def __init__(
        self,
        engine: EngineModel,
        config: ServiceConfig | None = None,
        *,
        name: str | None = None,
        share: DeviceShare | None = None,
        hooks: ServiceHooks | None = None,
    ):
        """`share`: devices shared with other models (fair turns per batch); `name` identifies
        this model there and in logs (default: the card's name)."""
        self.engine = engine
        self.card = engine.card
        self.config = config = config or ServiceConfig()
        self.name = name or engine.card.name
        self.hooks = hooks = hooks or ServiceHooks()
        common = dict(limits=config.queue, on_batch=hooks.on_batch, share=share)
        self.text = Batcher(
            TextWorkload(engine), fault_hook=hooks.fault_hook, name=f"{self.name}/text", **common
        )
        self.images: Batcher | None = None
        if engine.images is not None:  # images share the device with text, not batches
            workload = ImageWorkload(engine.images)
            self.images = Batcher(workload, name=f"{self.name}/images", **common)
        self.fused: Batcher | None = None  # a vision-language model's items
        if engine.fused is not None:
            workload = FusedWorkload(engine.fused, engine.grid.token_budget)
            self.fused = Batcher(workload, name=f"{self.name}/vl", **common)
        self.cache = EmbeddingCache(config.cache_bytes)
        self.media = MediaEmbedder(
            self.card,
            engine.images,
            self.images,
            config.media_limits,
            cache=self.cache,
            on_cache=hooks.on_cache,
            decode_workers=config.decode_workers,
        )

    # -- lifecycle and state ------------------------------------------------------------------

    @property
    def batchers(self) -> list[Batcher]:
        return [b for b in (self.text, self.images, self.fused) if b is not None]

    @property
    def item_batcher(self) -> Batcher:
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
        stop = getattr(self.engine.runner, "stop_background", None)
        if stop is not None:  # a multi-host runner compiles everything before ready
            stop()
        return drained

    def unhealthy(self) -> str | None:
        return self.engine.unhealthy_reason()

    def status(self) -> EngineStatus:
        return EngineStatus(
            warm=all(b.ready.is_set() for b in self.batchers),
            unhealthy=self.engine.unhealthy_reason(),
            queued_requests=sum(b.queued_requests for b in self.batchers),
            queued_tokens=sum(b.queued_tokens for b in self.batchers),
            active_requests=sum(b.active_requests for b in self.batchers),
            cache_bytes=self.cache.size_bytes,
            lazy_compiles=self.engine.runner.lazy_compiles,
            compile_seconds=self.engine.runner.compile_seconds,
            cache_hits=cache_counts().hits,
            cache_misses=cache_counts().misses,
            programs=len(self.engine.runner.compile_log),
            adapters=tuple(bank.loaded()) if (bank := self.engine.lora_bank) is not None else (),
        )

    def facts(self) -> EngineFacts:
        model = self.engine.model
        labels = model.hf_config.get("id2label") or {"0": "LABEL_0"}
        return EngineFacts(
            dtype=str(model.dtype),
            token_budget=self.engine.grid.token_budget,
            id2label={str(k): str(v) for k, v in labels.items()},
            calibration_key=(str(model.model_dir), self.card.name, str(model.dtype)),
            host_devices=model.mesh.devices.flat[0].platform == "cpu",
        )

    def check_capacity(self) -> None:
        """OverloadedError now if this model's queue is full (before any work on a request)."""
        self.item_batcher.check_capacity()

    # -- rows ---------------------------------------------------------------------------------

    async def embed_rows(
        self, rows: list[np.ndarray], options: RowOptions, progress: RequestProgress
    ) -> np.ndarray:
        """Vectors of token rows: seen rows from the cache (when it is on), the rest batched
        with other requests' rows under the job's adapter, priority and deadline."""
        async with self._adapter(options.adapter) as (namespace, slot):
            if not self.cache.enabled:
                self.admit(int(sum(map(len, rows))), options.deadline)
                return await self.text.embed(
                    rows, priority=options.priority, adapter_slot=slot, progress=progress
                )
            return await self._embed_cached(rows, options, namespace, slot, progress)

    async def _embed_cached(
        self,
        rows: list[np.ndarray],
        options: RowOptions,
        namespace: str,
        slot: int,
        progress: RequestProgress,
    ) -> np.ndarray:
        """Rows seen before come from the cache; only distinct new sequences reach the device."""
        lookup = self.cache.lookup(rows, namespace=namespace)
        computed = np.empty((0, self.card.dimensions), dtype=np.float32)
        progress.add_rows(len(lookup.hits))
        if lookup.to_compute:
            todo = [rows[i] for i in lookup.to_compute]
            self.admit(sum(len(t) for t in todo), options.deadline)
            computed = await self.text.embed(
                todo, priority=options.priority, adapter_slot=slot, progress=progress
            )
            self.cache.store([lookup.keys[i] for i in lookup.to_compute], computed)
        if self.hooks.on_cache:
            self.hooks.on_cache(len(lookup.hits), len(rows) - len(lookup.hits))
        return assemble(lookup, computed, self.card.dimensions)

    def admit(self, tokens: int, deadline: float | None) -> None:
        """Refuse up front what cannot finish by the deadline even with the device to itself,
        at the throughput measured so far (nothing is refused before it is measured)."""
        if deadline is None:
            return
        expected = self.item_batcher.expected_seconds(tokens)
        left = deadline - time.monotonic()
        if expected is not None and expected > left:
            raise DeadlineError(tokens, expected, left)

    @contextlib.asynccontextmanager
    async def _adapter(self, ref: AdapterRef | None) -> AsyncIterator[tuple[str, int]]:
        """(cache namespace, LoRA slot) of the job's adapter, pinned while the job runs."""
        if ref is None:
            yield "", 0
            return
        loop = asyncio.get_running_loop()  # loading reads files and copies to the device
        slot = await loop.run_in_executor(None, self.engine.adapter_slot, ref.name, ref.path)
        bank = self.engine.lora_bank
        try:
            yield bank.identity(ref.name), slot  # pinned: the identity is stable here
        finally:
            bank.release(ref.name)

    # -- multimodal items ---------------------------------------------------------------------

    async def embed_items(
        self, job: EmbedJob, progress: RequestProgress, texts: TextPath
    ) -> tuple[np.ndarray, int]:
        """A job of items (images/videos as bytes or decoded) → full-width vectors and usage:
        fused per item as the card says (item texts through `texts`, the input half's text
        path), or read whole by a vision-language model. `job`'s options are resolved."""
        o = job.options
        if self.engine.fused is not None:
            return await self._embed_fused(job, o, progress)
        return await self.media.embed(job.inputs, texts, priority=o.priority, frames=o.video_frames)

    async def _embed_fused(
        self, job: EmbedJob, o: EmbedOptions, progress: RequestProgress
    ) -> tuple[np.ndarray, int]:
        """A vision-language model's job (engine/workloads/qwen_vl.py): images and videos
        decoded under the media limits and prepared (resized, patchified, tokenized) off the
        event loop, then batched with other requests' items by its vision-language batcher."""
        unsupported = [
            name
            for name, used in (("lora_path", o.adapter is not None), ("chunking", o.chunking))
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
        instruction = self.engine.vl_instruction(o.prompt_name, o.instruction)
        with progress.timed("preprocess"):
            rows = await loop.run_in_executor(None, self.engine.fused.prepare, items, instruction)
        tokens = sum(len(r.ids) for r in rows)
        check_request_tokens(tokens, self.config.max_request_tokens)
        self.admit(tokens, o.deadline)
        vectors = await self.fused.embed(rows, priority=o.priority, progress=progress)
        return vectors, tokens

    def _decoded(self, index: int, item: EmbedItem | str, frames: int | None) -> EmbedItem:
        """`item` with its image and video decoded under the media limits (the video sampled
        as the model's recipe does, at most `frames` frames; errors name the item)."""
        if isinstance(item, str):
            return EmbedItem(text=item)
        engine = self.engine.fused
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


def local_service(
    engine: EngineModel,
    config: ServiceConfig | None = None,
    *,
    name: str | None = None,
    share: DeviceShare | None = None,
    hooks: ServiceHooks | None = None,
) -> EmbeddingService:
    """A model's whole service in this process: its input half over its own device half."""
    config = config or ServiceConfig()
    rows = RowEngine(engine, config, name=name, share=share, hooks=hooks)
    return EmbeddingService(
        engine, rows, config, name=name, calibration_key=rows.facts().calibration_key
    )
