"""Images → embeddings: preprocessing, image-count buckets and one compiled program per bucket.

Every image becomes the same [3, H, W] array, so the only shape that varies
is the number of images; batches are padded to a few batch sizes (the image
grid), each compiled ahead of time like the text buckets. Rows are split over
the mesh's `data` axis; parameters keep the shardings they were loaded with.
Videos are frames: the caller samples them and averages the frame vectors.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec
from PIL import Image

from jaxembed.engine.batching.buckets import Bucket, PlannedBatch
from jaxembed.engine.batching.workload import DeviceResult, Workload
from jaxembed.engine.device.runner import TRACE_LOCK
from jaxembed.images import ImagePreprocessor
from jaxembed.parallel.sharding import DATA_AXIS, activation_sharding, replicated
from jaxembed.pooling import l2_normalize
from jaxembed.weights.loader import LoadedModel

DEFAULT_IMAGE_BATCH_SIZES = (1, 2, 4, 8, 16, 32)


def image_forward(
    params: Any, pixels_bchw: jax.Array, *, module: Any, normalize: bool
) -> jax.Array:
    """The numeric path for images: params, pixels → [B, D] float32."""
    features = module.apply({"params": params}, pixels_bchw, method="encode_image")
    features = features.astype(jnp.float32)
    return l2_normalize(features) if normalize else features


class ImageEngine:
    """Preprocess, bucket and run images of one model (whose module has `encode_image`)."""

    def __init__(
        self,
        model: LoadedModel,
        *,
        token_budget: int,
        batch_sizes: Sequence[int] = DEFAULT_IMAGE_BATCH_SIZES,
    ):
        config = model.config
        self.preprocess = ImagePreprocessor.for_model(model.model_dir, config.image_size)
        self.patches_per_image = config.num_patches
        # What one image occupies in the vision tower (patches, plus CLIP's class token).
        self.positions = config.image_positions
        data = model.mesh.shape[DATA_AXIS]
        sizes = sorted({-(-b // data) * data for b in batch_sizes})
        fitting = [b for b in sizes if b * self.positions <= token_budget]
        self.batch_sizes = tuple(fitting or sizes[:1])
        self.pixel_shape = (config.num_channels, config.image_size, config.image_size)
        self.mesh = model.mesh
        self._params = model.params
        self._sharding = NamedSharding(model.mesh, PartitionSpec(DATA_AXIS))
        forward = functools.partial(
            image_forward, module=model.module(), normalize=model.card.normalize
        )
        self._jitted = jax.jit(
            forward,
            in_shardings=(jax.tree.map(lambda x: x.sharding, model.params), self._sharding),
            out_shardings=replicated(model.mesh),
        )
        self._compiled: dict[int, Callable[..., jax.Array]] = {}
        self._lock = threading.Lock()
        self.dimensions = model.card.dimensions
        # Around every dispatch: a model spread over several processes publishes the stacked
        # pixels as a step there first (engine/device/group_runner.py), so every process runs
        # the same batch.
        self.dispatch_guard: Callable[[np.ndarray], contextlib.AbstractContextManager] = (
            lambda stacked: contextlib.nullcontext()
        )

    @property
    def max_batch(self) -> int:
        return self.batch_sizes[-1]

    def batch_bucket(self, images: int) -> int:
        return next(b for b in self.batch_sizes if b >= images)

    def pixels(self, image: Image.Image) -> np.ndarray:
        """One decoded image → the [3, H, W] float32 array the vision tower takes."""
        return self.preprocess(image)

    def _compile(self, batch: int) -> Callable[..., jax.Array]:
        with self._lock:
            if batch not in self._compiled:
                spec = jax.ShapeDtypeStruct(
                    (batch, *self.pixel_shape), jnp.float32, sharding=self._sharding
                )
                with TRACE_LOCK, activation_sharding(self.mesh):  # traces one at a time
                    lowered = self._jitted.lower(self._params, spec)
                self._compiled[batch] = lowered.compile()
            return self._compiled[batch]

    def warmup(self, progress: Callable[[int, int, Bucket], None] | None = None) -> float:
        start = time.perf_counter()
        for i, batch in enumerate(self.batch_sizes):
            self._compile(batch)
            if progress:
                progress(i + 1, len(self.batch_sizes), Bucket(batch, self.positions))
        return time.perf_counter() - start

    def run(self, pixels: Sequence[np.ndarray]) -> jax.Array:
        """Dispatch up to `max_batch` preprocessed images, padded to a bucket; returns at once."""
        batch = self.batch_bucket(len(pixels))
        stacked = np.zeros((batch, *self.pixel_shape), dtype=np.float32)
        stacked[: len(pixels)] = pixels
        with self.dispatch_guard(stacked):
            return self.run_stacked(stacked)

    def run_stacked(self, stacked: np.ndarray) -> jax.Array:
        """Dispatch a bucket-sized [batch, C, H, W] float32 array (a pod's follower: the
        leader's batch as it published it)."""
        compiled = self._compiled.get(len(stacked)) or self._compile(len(stacked))
        return compiled(self._params, stacked)

    def plan(self, count: int) -> list[PlannedBatch]:
        """Consecutive chunks of at most `max_batch` images (every image costs the same)."""
        return [
            PlannedBatch(
                np.arange(start, min(start + self.max_batch, count)),
                Bucket(self.batch_bucket(min(self.max_batch, count - start)), self.positions),
            )
            for start in range(0, count, self.max_batch)
        ]

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        """[N, D] float32 embeddings of decoded images (preprocessed here), in order."""
        return self.embed_pixels([self.pixels(image) for image in images])

    def embed_pixels(self, pixels: Sequence[np.ndarray]) -> np.ndarray:
        """[N, D] float32 embeddings of preprocessed images, all batches dispatched first."""
        out = np.empty((len(pixels), self.dimensions), dtype=np.float32)
        pending = [
            (p.indices, self.run([pixels[i] for i in p.indices])) for p in self.plan(len(pixels))
        ]
        for indices, result in pending:
            out[indices] = np.asarray(result)[: len(indices)]
        return out


class ImageWorkload(Workload):
    """Preprocessed image rows for a Batcher: concurrent requests share image batches."""

    def __init__(self, engine: ImageEngine):
        self.engine = engine
        self.dimensions = engine.dimensions
        self.step_budget = engine.max_batch * engine.positions

    def sizes(self, rows: Sequence[np.ndarray]) -> np.ndarray:
        return np.full(len(rows), self.engine.positions, dtype=np.int64)

    def costs(self, sizes: np.ndarray) -> np.ndarray:
        return sizes

    def plan(self, rows: Sequence[np.ndarray], sizes: np.ndarray) -> list[PlannedBatch]:
        return self.engine.plan(len(rows))

    def run(
        self, rows: Sequence[np.ndarray], planned: PlannedBatch, slots: np.ndarray | None
    ) -> DeviceResult:
        if slots is not None:
            raise ValueError("LoRA adapters do not apply to images")
        return DeviceResult(self.engine.run(rows), len(rows))

    def warmup(self, progress=None) -> float:
        return self.engine.warmup(progress)
