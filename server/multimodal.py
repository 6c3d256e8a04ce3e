"""Items `{"text", "image", "video"}` → one embedding each, in input order.

Per item: the text part goes through the text batcher (cache included), an
image is read (server/media.py), decoded and preprocessed on a small worker
pool, then batched with other requests' images; a video's sampled frames go
to the image batcher together and their vectors are averaged. An item with
several parts is fused as the model's card says (`pooling.fuse_modalities`).
All parts of all items run concurrently; the first failure cancels the rest
and answers 400 naming the item. Images are cached by a hash of their bytes
(the embedding cache, `--cache-mb`); videos are always decoded.

Usage counts text tokens plus image patches: each image adds the vision
tower's patch count ((image_size / patch_size)^2, e.g. 49 for ViT-B/32 at
224), each video adds frames x patches.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from jaxembed.engine.batcher import Batcher
from jaxembed.engine.cache import EmbeddingCache, bytes_key
from jaxembed.engine.embedder import Embedder
from jaxembed.errors import MediaError
from jaxembed.media import MediaLimits, decode_image, decode_video
from jaxembed.pooling import fuse_modalities, mean_of_frames
from jaxembed_server.media import MediaLoader
from jaxembed_server.protocol import MultimodalItem

# (token lists of the texts) → their vectors; the caller applies cache, adapters and priority.
TextEmbedder = Callable[[list[str]], Awaitable[tuple[np.ndarray, int]]]


@dataclasses.dataclass
class _Part:
    vector: np.ndarray
    tokens: int  # text tokens or image patches this part counts in usage


class MultimodalPipeline:
    def __init__(
        self,
        embedder: Embedder,
        batcher: Batcher | None,
        loader: MediaLoader,
        limits: MediaLimits,
        *,
        max_media_items: int,
        cache: EmbeddingCache | None = None,
        on_cache: Callable[[bool], None] | None = None,
        decode_workers: int = 4,
    ):
        """`cache`: images are looked up by a hash of their bytes (decoding, preprocessing
        and the device are skipped on a hit); `on_cache(hit)` reports each lookup."""
        self.embedder = embedder
        self.card = embedder.card
        self.batcher = batcher
        self.loader = loader
        self.limits = limits
        self.max_media_items = max_media_items
        self.cache = cache
        self._on_cache = on_cache
        self._pool = ThreadPoolExecutor(decode_workers, thread_name_prefix="jaxembed-media")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def check(self, items: Sequence[MultimodalItem], model: str) -> None:
        """Refuse what this model cannot embed, before any fetching."""
        for i, item in enumerate(items):
            unsupported = [m for m in item.modalities if m not in self.card.modalities]
            if unsupported:
                raise MediaError(
                    f"input[{i}] has {'/'.join(unsupported)} content, but {model} only embeds "
                    f"{'/'.join(self.card.modalities)}",
                    code="unsupported_modality",
                    index=i,
                )
        media = sum((item.image is not None) + (item.video is not None) for item in items)
        if media > self.max_media_items:
            raise MediaError(
                f"the request has {media} images/videos; the maximum is {self.max_media_items}",
                code="too_many_media_items",
            )

    async def embed(
        self,
        items: Sequence[MultimodalItem],
        embed_texts: TextEmbedder,
        *,
        priority: int,
        video_frames: int | None,
    ) -> tuple[np.ndarray, int]:
        """[N, D] vectors (one per item) and the usage count (tokens + patches)."""
        frames = video_frames or self.card.video_frames
        text_items = [i for i, item in enumerate(items) if item.text is not None]
        jobs: list[Awaitable] = []
        if text_items:
            jobs.append(embed_texts([items[i].text for i in text_items]))
        media_jobs = [
            (i, kind, source)
            for i, item in enumerate(items)
            for kind, source in (("image", item.image), ("video", item.video))
            if source is not None
        ]
        jobs += [self._media(i, kind, source, priority, frames) for i, kind, source in media_jobs]
        tasks = [asyncio.ensure_future(job) for job in jobs]
        try:
            results = await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            raise
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

    async def _media(self, index: int, kind: str, source: str, priority: int, frames: int) -> _Part:
        try:
            data = await self.loader.read(source)
            loop = asyncio.get_running_loop()
            engine = self.embedder.images
            if kind == "image":
                return _Part(await self._image_vector(data, priority), engine.patches_per_image)
            pixel_rows = await loop.run_in_executor(self._pool, self._video_pixels, data, frames)
            vectors = await self.batcher.embed(pixel_rows, priority=priority)
            return _Part(
                mean_of_frames(vectors, self.card.normalize),
                engine.patches_per_image * len(pixel_rows),
            )
        except MediaError as e:
            raise MediaError(f"input[{index}].{kind}: {e}", code=e.code, index=index) from None

    async def _image_vector(self, data: bytes, priority: int) -> np.ndarray:
        """An image's vector, from the cache when the same bytes were embedded recently."""
        key = bytes_key(data, "image") if self.cache is not None else None
        if key is not None:
            cached = self.cache.get(key)
            if self._on_cache:
                self._on_cache(cached is not None)
            if cached is not None:
                return cached
        loop = asyncio.get_running_loop()
        pixels = await loop.run_in_executor(self._pool, self._image_pixels, data)
        vector = (await self.batcher.embed([pixels], priority=priority))[0]
        if key is not None:
            self.cache.store([key], vector[None])
        return vector

    def _image_pixels(self, data: bytes) -> np.ndarray:
        return self.embedder.images.pixels(decode_image(data, self.limits))

    def _video_pixels(self, data: bytes, frames: int) -> list[np.ndarray]:
        decoded = decode_video(data, frames, self.limits)
        return [self.embedder.images.pixels(frame) for frame in decoded]
