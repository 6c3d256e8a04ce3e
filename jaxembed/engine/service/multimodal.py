"""Items `{text, image, video}` → one embedding each, in input order.

Per item: the text part goes through the caller's text path (cache, adapters,
chunking included); an image is decoded and preprocessed on a small worker
pool, then batched with other requests' images; a video's sampled frames go
to the image batcher together and their vectors are averaged. An item with
several parts is fused as the model's card says (`pooling.fuse_modalities`).
All parts of all items run concurrently; the first failure cancels the rest
and names the item. Images given as bytes are cached by a hash of those bytes
(the service's embedding cache); videos are always decoded.

Usage counts text tokens plus image patches: each image adds the vision
tower's patch count ((image_size / patch_size)^2, e.g. 49 for ViT-B/32 at
224), each video adds frames x patches.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from PIL import Image

from jaxembed.aio import gather_or_cancel
from jaxembed.card import ModelCard
from jaxembed.engine.batching.batcher import Batcher
from jaxembed.engine.batching.cache import EmbeddingCache, bytes_key
from jaxembed.engine.request.jobs import EmbedItem, ImageSource, VideoSource
from jaxembed.engine.service.backend import CacheHook, TextPath
from jaxembed.engine.workloads.vision import ImageEngine
from jaxembed.errors import InvalidInputError, MediaError
from jaxembed.media import MediaLimits, decode_image, decode_video
from jaxembed.vectors import fuse_modalities, mean_of_frames


@dataclasses.dataclass
class _Part:
    vector: np.ndarray
    tokens: int  # text tokens or image patches this part counts in usage


class MediaEmbedder:
    """The image/video half of a service: decoding, the image batcher, frame means, fusion."""

    def __init__(
        self,
        card: ModelCard,
        engine: ImageEngine | None,
        batcher: Batcher | None,
        limits: MediaLimits,
        *,
        cache: EmbeddingCache,
        on_cache: CacheHook | None = None,
        decode_workers: int = 4,
    ):
        self.card = card
        self.engine = engine
        self.batcher = batcher
        self.limits = limits
        self.cache = cache
        self._on_cache = on_cache
        self._pool = ThreadPoolExecutor(decode_workers, thread_name_prefix="jaxembed-media")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def embed(
        self, items: Sequence[EmbedItem], texts: TextPath, *, priority: int, frames: int | None
    ) -> tuple[np.ndarray, int]:
        """[N, D] vectors (one per item) and the usage count (tokens + patches)."""
        frames = frames or self.card.video_frames
        text_items = [i for i, item in enumerate(items) if item.text is not None]
        jobs: list[Awaitable] = []
        if text_items:
            jobs.append(texts([items[i].text for i in text_items]))
        media_jobs = [
            (i, kind, source)
            for i, item in enumerate(items)
            for kind, source in (("image", item.image), ("video", item.video))
            if source is not None
        ]
        jobs += [self._media(i, kind, source, priority, frames) for i, kind, source in media_jobs]
        results = await gather_or_cancel(jobs)
        parts: list[dict[str, _Part]] = [{} for _ in items]
        if text_items:
            (text_vectors, text_token_counts), results = results[0], results[1:]
            for row, i in enumerate(text_items):
                parts[i]["text"] = _Part(text_vectors[row], int(text_token_counts[row]))
        for (i, kind, _), part in zip(media_jobs, results, strict=True):
            parts[i][kind] = part
        vectors = np.stack([self._fuse(p) for p in parts])
        return vectors, sum(part.tokens for p in parts for part in p.values())

    def _fuse(self, parts: dict[str, _Part]) -> np.ndarray:
        if len(parts) == 1:
            return next(iter(parts.values())).vector
        return fuse_modalities([(p.vector, self.card.fusion_weight(m)) for m, p in parts.items()])

    async def _media(self, index: int, kind: str, source: Any, priority: int, frames: int) -> _Part:
        try:
            patches = self.engine.patches_per_image
            if kind == "image":
                return _Part(await self._image_vector(source, priority), patches)
            loop = asyncio.get_running_loop()
            pixel_rows = await loop.run_in_executor(self._pool, self._video_pixels, source, frames)
            vectors = await self.batcher.embed(pixel_rows, priority=priority)
            return _Part(mean_of_frames(vectors, self.card.normalize), patches * len(pixel_rows))
        except MediaError as e:
            raise MediaError(f"input[{index}].{kind}: {e}", code=e.code, index=index) from None
        except InvalidInputError as e:
            raise InvalidInputError(f"input[{index}].{kind}: {e}", index=index) from None

    async def _image_vector(self, source: ImageSource, priority: int) -> np.ndarray:
        """An image's vector, from the cache when the same bytes were embedded recently."""
        key = bytes_key(source, "image") if isinstance(source, bytes) else None
        if key is not None and self.cache.enabled:
            cached = self.cache.get(key)
            if self._on_cache:
                hit = cached is not None
                self._on_cache(int(hit), int(not hit))
            if cached is not None:
                return cached
        loop = asyncio.get_running_loop()
        pixels = await loop.run_in_executor(self._pool, self._image_pixels, source)
        vector = (await self.batcher.embed([pixels], priority=priority))[0]
        if key is not None:
            self.cache.store([key], vector[None])
        return vector

    def _image_pixels(self, source: ImageSource) -> np.ndarray:
        image = source if isinstance(source, Image.Image) else decode_image(source, self.limits)
        return self.engine.pixels(image)

    def _video_pixels(self, source: VideoSource, frames: int) -> list[np.ndarray]:
        if isinstance(source, bytes):
            decoded = decode_video(source, frames, self.limits)
        else:  # frames sampled by the caller (Python API)
            decoded = list(source)
            if not decoded:
                raise InvalidInputError("a video needs at least one frame")
        return [self.engine.pixels(frame) for frame in decoded]
