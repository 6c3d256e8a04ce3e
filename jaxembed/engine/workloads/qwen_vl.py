"""Vision-language embeddings in process (GME-Qwen2-VL, Qwen3-VL-Embedding): text, image,
video and mixed items → one vector each.

Each item is written as its model's published code writes it (engine/vl_recipe.py): the
chat turn with one placeholder per image / video, the image resized as that code does, then
patchified as the transformers processor does (jaxembed/qwen_vl_images.py); the placeholder
becomes one token per merged vision feature (a video: per temporal patch, a timestamp and its
own vision block). Two compiled programs per shape:

- the vision tower over *vision rows* — one image, or one temporal patch of a video, per
  row (attention never crosses them, so a row is the unit; rows are not packed together
  since attention is quadratic in a row's length);
- the decoder over the token rows, the visual positions taking rows of the tower's
  flattened output by index (gathered on the device: the features never travel through the
  host), Qwen3-VL's deep-stack features added after its first layers, M-RoPE positions where
  the recipe asks for them, pooled at the last token and normalised.

Shapes are bucketed (rows to powers of two, lengths to multiples of 64 tokens / 256 patches)
so that XLA compiles each once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from jaxembed.engine.batching.buckets import Bucket, PlannedBatch
from jaxembed.engine.batching.workload import DeviceResult, Workload
from jaxembed.engine.request.jobs import EmbedItem
from jaxembed.engine.workloads.vl_recipe import (
    VLRecipe,
    frame_timestamps,
    mrope_positions,
    resize_frames,
    video_frame_indices,
    video_frame_size,
)
from jaxembed.errors import InvalidInputError, MediaError, ModelLoadError
from jaxembed.media import MediaLimits, decode_frames, probe_video
from jaxembed.models.qwen2_vl_vision import position_interpolation, vision_positions
from jaxembed.models.qwen_vl import QwenVLModel
from jaxembed.pooling import l2_normalize, pool
from jaxembed.qwen_vl_images import QwenVLImagePreprocessor
from jaxembed.weights.loader import LoadedModel

TEXT, IMAGE, VIDEO = 0, 1, 2  # token types (transformers' mm_token_type_ids)
TOKEN_STEP, PATCH_STEP = 64, 256  # length buckets of token rows and of vision rows


@dataclasses.dataclass(frozen=True)
class VideoClip:
    """A video's sampled frames with where they came from (for the prompt's timestamps)."""

    frames: Sequence[Image.Image]
    indices: Sequence[int]
    fps: float


@dataclasses.dataclass
class _Prepared:
    """One item: its token row, each token's type, and its vision units ((patches, grid
    (1, h, w)) per image / temporal patch) in the order their tokens appear."""

    ids: np.ndarray
    types: np.ndarray
    units: list[tuple[np.ndarray, tuple[int, int, int]]]


def _bucket(n: int, smallest: int) -> int:
    """A power of two ≥ n (row counts)."""
    return max(smallest, 1 << max(0, (n - 1).bit_length()))


def _round_up(n: int, step: int) -> int:
    """n rounded up to a multiple of `step` (lengths: finer than powers of two, since
    attention's cost grows with the square of the padded length)."""
    return max(step, -(-n // step) * step)


class QwenVLEngine:
    """Vision-language items → [N, D] float32 vectors, the card's recipe (module doc)."""

    def __init__(self, model: LoadedModel, tokenizer):
        self.model, self.card, self.tokenizer = model, model.card, tokenizer
        self.config = model.config
        self.recipe = VLRecipe.from_card(model.card.vl_template)
        base = _preprocessor(model)
        r = self.recipe
        self.images = (
            dataclasses.replace(
                base, min_pixels=r.processor_min_pixels, max_pixels=r.processor_max_pixels
            )
            if r.processor_resize
            else dataclasses.replace(base, resize=False)
        )
        # A video's frame blocks are written as token ids (`_frame_block`).
        self._frame_marks = tuple(self._token_id(t) for t in ("<|vision_start|>", "<|vision_end|>"))
        module = model.module()
        self._vision = jax.jit(functools.partial(module.apply, method=QwenVLModel.encode_vision))
        self._fused = jax.jit(functools.partial(fused_forward, module))
        # Around every dispatch: a model spread over several processes publishes the batch's
        # host arrays as a step there first (engine/device/group_runner.py), so every process
        # runs the same programs on the same arrays.
        self.dispatch_guard: Callable[[list], contextlib.AbstractContextManager] = lambda arrays: (
            contextlib.nullcontext()
        )

    @property
    def takes_video(self) -> bool:
        return bool(self.recipe.video)

    def _token_id(self, token: str) -> int | None:
        found = self.tokenizer.token_to_id(token)
        if found is None and self.takes_video:
            raise ModelLoadError(f"{self.card.name}: the tokenizer has no {token} token")
        return found

    # -- media ---------------------------------------------------------------------------

    def decode_video(
        self, data: bytes, limits: MediaLimits, max_frames: int | None = None
    ) -> VideoClip:
        """An encoded video → the frames the recipe samples (`qwen_vl_utils.fetch_video`)."""
        probe = probe_video(data, limits)
        indices = video_frame_indices(self.recipe, probe.frames, probe.fps, max_frames)
        distinct = sorted(set(indices))
        frames = dict(zip(distinct, decode_frames(data, distinct, probe, limits), strict=True))
        return VideoClip([frames[i] for i in indices], indices, float(probe.fps))

    def _image_unit(self, image) -> tuple[np.ndarray, tuple[int, int, int]]:
        if isinstance(image, bytes | bytearray):
            image = Image.open(io.BytesIO(image))
        if not self.recipe.alpha_on_white:
            image = image.convert("RGB")  # GME's `convert("RGB")`, transparency dropped
        return self.images(self.recipe.fetch(image, self.images.factor))

    def _video_units(self, video) -> tuple[list, list[float]]:
        """A clip → its temporal patches as vision units, and each one's timestamp."""
        if not self.takes_video:
            raise InvalidInputError(f"{self.card.name} does not take video inputs")
        if not isinstance(video, VideoClip):  # frames already sampled: spaced at the recipe's fps
            frames = list(video)
            video = VideoClip(frames, list(range(len(frames))), self.recipe.video_fps)
        if len(video.frames) < 2:
            raise MediaError("a video needs at least two frames", code="invalid_video")
        first = video.frames[0]
        height, width = video_frame_size(
            self.recipe, first.height, first.width, len(video.frames), self.images.factor
        )
        patches, (t, h, w) = self.images.video(resize_frames(video.frames, height, width))
        per = h * w
        units = [(patches[k * per : (k + 1) * per], (1, h, w)) for k in range(t)]
        stamps = frame_timestamps(video.indices, video.fps, self.images.temporal_patch_size)
        return units, stamps

    # -- tokens --------------------------------------------------------------------------

    def _prepare(self, item: EmbedItem, instruction: str | None) -> _Prepared:
        video, stamps = ([], []) if item.video is None else self._video_units(item.video)
        image = [] if item.image is None else [self._image_unit(item.image)]
        prompt = self.recipe.prompt(item.text, bool(image), bool(video), instruction)
        ids = np.asarray(self.tokenizer.encode(prompt).ids, dtype=np.int32)
        for token, wanted in (
            (self.config.image_token_id, image),
            (self.config.video_token_id, video),
        ):
            if int(np.sum(ids == token)) != (1 if wanted else 0):
                raise InvalidInputError(  # a placeholder typed into the text or instruction
                    f"the item's text holds {self.tokenizer.id_to_token(int(token))}, which this "
                    "model reserves for its own image/video placeholders",
                    param="input",
                )
        merge = self.config.vision.merge_size**2
        pieces, types = [], []
        for token in ids:
            if token == self.config.image_token_id and image:
                count = int(np.prod(image[0][1])) // merge
                pieces.append(np.full(count, token, np.int32))
                types.append(np.full(count, IMAGE, np.int8))
            elif token == self.config.video_token_id and video:
                for (_, grid), stamp in zip(video, stamps, strict=True):
                    block = self._frame_block(grid[1] * grid[2] // merge, stamp)
                    pieces.append(block)
                    types.append(np.where(block == self.config.video_token_id, VIDEO, TEXT))
            else:
                pieces.append(np.asarray([token], np.int32))
                types.append(np.zeros(1, np.int8))
        row = np.concatenate(pieces)
        if len(row) > self.card.max_length:
            raise InvalidInputError(  # cutting it would cut vision tokens or the pooled turn
                f"an item is {len(row)} tokens with its image/video tokens; the maximum is "
                f"{self.card.max_length} (vision-language items are never truncated)"
            )
        return _Prepared(row, np.concatenate(types).astype(np.int8), video + image)

    def _frame_block(self, count: int, stamp: float) -> np.ndarray:
        """Qwen3VLProcessor's per-temporal-patch text: `<t seconds>` then its vision block."""
        stamp_ids = self.tokenizer.encode(f"<{stamp:.1f} seconds>", add_special_tokens=False).ids
        start, end = self._frame_marks
        return np.asarray([*stamp_ids, start, *[self.config.video_token_id] * count, end], np.int32)

    # -- programs ------------------------------------------------------------------------

    def _vision_inputs(self, units) -> list[np.ndarray | None]:
        """The vision tower's host arrays for every unit of a batch: patches, positions,
        segments, and (Qwen3-VL) position-table taps and weights (else None)."""
        vision = self.config.vision
        rows = _bucket(len(units), 1)
        length = _round_up(max(len(p) for p, _ in units), PATCH_STEP)
        batch = np.zeros((rows, length, vision.patch_features), np.float32)
        positions = np.zeros((rows, length, 2), np.int32)
        segments = np.zeros((rows, length), np.int32)
        table = vision.position_side  # Qwen3-VL: taps into its learned position table
        taps = np.zeros((rows, length, 4), np.int32) if table else None
        weights = np.zeros((rows, length, 4), np.float32) if table else None
        for r, (patches, grid) in enumerate(units):
            n = len(patches)
            batch[r, :n] = patches
            positions[r, :n], segments[r, :n], taps_r, weights_r = _grid_tables(
                grid, vision.merge_size, table
            )
            if table:
                taps[r, :n], weights[r, :n] = taps_r, weights_r
        return [batch, positions, segments, taps, weights]

    def _vision_rows(self, batch, positions, segments, taps, weights):
        """Every vision unit's merged features on the device: (flattened [R·N', D], deep-stack
        [K, R·N', D] or None)."""
        vision = self.config.vision
        rows, length = segments.shape
        interpolation = (taps, weights) if taps is not None else None
        out = self._vision({"params": self.model.params}, batch, positions, segments, interpolation)
        merged, deep = out if vision.deepstack else (out, None)
        per_row = length // vision.merge_size**2
        flat = merged.reshape(rows * per_row, -1)
        if deep is not None:
            deep = deep.reshape(deep.shape[0], rows * per_row, -1)
        return flat, deep

    def embed(self, items: Sequence[EmbedItem], instruction: str | None = None) -> np.ndarray:
        """One normalised vector per item."""
        return self.embed_counted(items, instruction)[0]

    def embed_counted(
        self, items: Sequence[EmbedItem], instruction: str | None = None
    ) -> tuple[np.ndarray, int]:
        """(one vector per item, the tokens embedded — image/video tokens included), the
        items run in one batch. (A server's jobs go through `FusedWorkload` instead.)"""
        rows = self.prepare(items, instruction)
        vectors = np.asarray(self.launch(rows), np.float32)[: len(rows)]
        return vectors, sum(len(r.ids) for r in rows)

    def prepare(
        self, items: Sequence[EmbedItem], instruction: str | None = None
    ) -> list[_Prepared]:
        """The host's share of each item (resizes, patches, its token row): what a batch of
        rows needs before `launch`."""
        return [self._prepare(item, instruction) for item in items]

    def launch(self, rows: Sequence[_Prepared]) -> jax.Array:
        """Dispatch the vision and decoder programs for `rows` (one batch) without waiting:
        [bucket rows, D] on the device, the first len(rows) meaningful."""
        arrays = self.host_arrays(rows)
        with self.dispatch_guard(arrays):
            return self.run_arrays(arrays)

    def host_arrays(self, prepared: Sequence[_Prepared]) -> list[np.ndarray | None]:
        """Every host array one batch's programs take (`run_arrays`): the vision tower's five
        (None without images or videos) and the decoder's ids, mask, source, positions."""
        units = [u for p in prepared for u in p.units]
        vision = self._vision_inputs(units) if units else [None] * 5
        per_row = 0 if not units else vision[2].shape[1] // self.config.vision.merge_size**2
        return [*vision, *self._token_batch(prepared, per_row)]

    def run_arrays(self, arrays: Sequence[np.ndarray | None]) -> jax.Array:
        """Dispatch one batch from its host arrays (a pod's follower: as the leader sent
        them)."""
        vision, (ids, mask, source, positions) = arrays[:5], arrays[5:]
        if vision[0] is None:  # no images or videos in the batch
            flat, deep = self._no_vision(), None
        else:
            flat, deep = self._vision_rows(*vision)
        return self._fused({"params": self.model.params}, ids, mask, flat, source, positions, deep)

    def _token_batch(self, prepared: Sequence[_Prepared], per_row: int):
        """Padded ids, mask, each position's row of the flattened vision output (−1: text;
        unit k of the batch owns rows k·per_row …) and, for M-RoPE recipes, positions."""
        batch = _bucket(len(prepared), 1)
        length = _round_up(max(len(p.ids) for p in prepared), TOKEN_STEP)
        merge = self.config.vision.merge_size
        ids = np.full((batch, length), self.config.text.pad_token_id, np.int32)
        mask = np.zeros((batch, length), np.int32)
        source = np.full((batch, length), -1, np.int32)
        mrope = self.recipe.positions == "mrope"
        positions = np.zeros((3, batch, length), np.int32) if mrope else None
        unit = 0
        for r, p in enumerate(prepared):
            n = len(p.ids)
            ids[r, :n], mask[r, :n] = p.ids, 1
            counts = [h * w // merge**2 for _, (_, h, w) in p.units]
            if counts:  # the units' tokens appear in unit order
                offsets = [(unit + k) * per_row + np.arange(c) for k, c in enumerate(counts)]
                source[r, np.flatnonzero(p.types != TEXT)] = np.concatenate(offsets)
            unit += len(counts)
            if mrope:
                positions[:, r, :n] = mrope_positions(p.types, [g for _, g in p.units], merge)
        return ids, mask, source, positions

    def _no_vision(self) -> np.ndarray:
        return np.zeros((1, self.config.text.hidden_size), np.float32)


@functools.lru_cache(maxsize=256)
def _grid_tables(grid: tuple[int, int, int], merge: int, side: int):
    """A vision row's positions, segments and (Qwen3-VL) position-table taps: the same for
    every image of a size and every temporal patch of a video, so computed once per grid."""
    positions, segments = vision_positions([grid], merge)
    taps = position_interpolation([grid], merge, side) if side else (None, None)
    return positions, segments, *taps


class FusedWorkload(Workload):
    """Prepared vision-language items for a Batcher: concurrent requests share batches, take
    fair turns by priority and tokens, and share the devices with other models like text."""

    def __init__(self, engine: QwenVLEngine, token_budget: int):
        self.engine = engine
        self.dimensions = engine.card.dimensions
        self.step_budget = token_budget

    def sizes(self, rows: Sequence[_Prepared]) -> np.ndarray:
        return np.fromiter((len(r.ids) for r in rows), dtype=np.int64, count=len(rows))

    def costs(self, sizes: np.ndarray) -> np.ndarray:
        return -(-sizes // TOKEN_STEP) * TOKEN_STEP

    def plan(self, rows: Sequence[_Prepared], sizes: np.ndarray) -> list[PlannedBatch]:
        """Rows by length (least padding), as many per batch as the token budget allows at
        a power-of-two row count; a row over the budget alone."""
        costs = self.costs(sizes)
        order = np.argsort(sizes, kind="stable").tolist()
        batches, current = [], []
        for i in order:
            trial = [*current, i]
            padded = _bucket(len(trial), 1) * int(costs[i])  # the longest so far
            if current and padded > self.step_budget:
                batches.append(current)
                trial = [i]
            current = trial
        batches.append(current)
        return [
            PlannedBatch(np.asarray(b), Bucket(_bucket(len(b), 1), int(costs[b[-1]])))
            for b in batches
            if b
        ]

    def run(self, rows, planned: PlannedBatch, slots: np.ndarray | None) -> DeviceResult:
        if slots is not None:
            raise ValueError("LoRA adapters do not apply to vision-language models")
        return DeviceResult(self.engine.launch(rows), len(rows))

    def warmup(self, progress=None) -> float:
        return 0.0  # shapes depend on the images: each bucket compiles on first use


def _preprocessor(model: LoadedModel) -> QwenVLImagePreprocessor:
    """The model's image processor settings, which must cut the patches its tower reads."""
    vision = model.config.vision
    qwen3 = vision.naming == "qwen3"  # Qwen3-VL normalises with mean = std = 0.5
    found = QwenVLImagePreprocessor.for_model(
        model.model_dir,
        patch_size=vision.patch_size,
        temporal_patch_size=vision.temporal_patch_size,
        merge_size=vision.merge_size,
        **({"mean": (0.5,) * 3, "std": (0.5,) * 3} if qwen3 else {}),
    )
    if found.patch_features != vision.patch_features or found.merge_size != vision.merge_size:
        raise ModelLoadError(
            f"{model.model_dir}: the image processor cuts {found.patch_size}-px patches "
            f"(merge {found.merge_size}); the vision tower reads {vision.patch_size}-px "
            f"(merge {vision.merge_size})"
        )
    return found


def fused_forward(module, variables, ids, mask, vision, source, positions, deep) -> jax.Array:
    hidden = module.apply(
        variables, ids, mask, vision, source, positions, deep, method=QwenVLModel.embed_fused
    )
    return l2_normalize(pool(hidden, mask, "last_token").astype(jnp.float32))
