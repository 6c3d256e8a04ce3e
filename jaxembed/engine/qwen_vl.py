"""GME-Qwen2-VL embeddings in process: text, image and text+image items → one vector each.

Each item is written in GME's published format (card `vl_template`, `gme_inference.py`):
`prefix(instruction) [image block] text suffix`; its image is resized as GME's own
`_fetch_image` does, then patchified as Qwen2-VL's processor does (jaxembed/qwen_vl_images.py),
and the placeholder `<|image_pad|>` becomes one token per merged vision feature. Two compiled
programs per shape: the vision tower over the batch's images, one per padded row (attention
stays within each image and its temporal slices), and the decoder over the token rows with the features
scattered in at the placeholders, pooled at the last token and normalised.

Shapes are bucketed (rows to powers of two, lengths to multiples of 64 tokens / 256 patches)
so that XLA compiles each once. This engine serves `Embedder.embed_items` / `embed` for this family; the HTTP server
does not route to it yet.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from jaxembed.engine.jobs import EmbedItem
from jaxembed.errors import InvalidInputError
from jaxembed.models.qwen2_vl_vision import vision_positions
from jaxembed.models.qwen_vl import QwenVLModel
from jaxembed.pooling import l2_normalize, pool
from jaxembed.qwen_vl_images import QwenVLImagePreprocessor
from jaxembed.weights.loader import LoadedModel

# GME's own pre-resize (gme_inference.py `_fetch_image`): multiples of 28, within these areas.
GME_FETCH_MIN_PIXELS, GME_FETCH_MAX_PIXELS, GME_MAX_RATIO = 4 * 28 * 28, 16384 * 28 * 28, 200
# GME's processor limits: min_image_tokens = 256, max_image_tokens = 1280 (x 28 x 28 pixels).
GME_MIN_PIXELS, GME_MAX_PIXELS = 256 * 28 * 28, 1280 * 28 * 28


def gme_fetch_size(height: int, width: int, factor: int = 28) -> tuple[int, int]:
    """GME's `_smart_resize` (not the processor's: it floors at one factor first and caps the
    aspect ratio afterwards)."""
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > GME_FETCH_MAX_PIXELS:
        beta = math.sqrt(height * width / GME_FETCH_MAX_PIXELS)
        h_bar = math.floor(height / beta / factor) * factor
        w_bar = math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < GME_FETCH_MIN_PIXELS:
        beta = math.sqrt(GME_FETCH_MIN_PIXELS / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    if max(h_bar, w_bar) / min(h_bar, w_bar) > GME_MAX_RATIO:
        h_bar, w_bar = (
            (w_bar * GME_MAX_RATIO, w_bar) if h_bar > w_bar else (h_bar, h_bar * GME_MAX_RATIO)
        )
    return h_bar, w_bar


def gme_fetch(image: Image.Image | bytes) -> Image.Image:
    """An item's image as GME's code prepares it: RGB, resized to `gme_fetch_size`."""
    if isinstance(image, bytes | bytearray):
        image = Image.open(io.BytesIO(image))
    image = image.convert("RGB")
    height, width = gme_fetch_size(image.height, image.width)
    return image.resize((width, height))  # PIL's default filter, as GME calls it


def _bucket(n: int, smallest: int) -> int:
    """A power of two ≥ n (row counts)."""
    return max(smallest, 1 << max(0, (n - 1).bit_length()))


def _round_up(n: int, step: int) -> int:
    """n rounded up to a multiple of `step` (lengths: finer than powers of two, since
    attention's cost grows with the square of the padded length)."""
    return max(step, -(-n // step) * step)


class QwenVLEngine:
    """Vision-language items → [N, D] float32 vectors, GME's recipe (module doc)."""

    def __init__(self, model: LoadedModel, tokenizer):
        self.model, self.card, self.tokenizer = model, model.card, tokenizer
        self.config = model.config
        self.template = dict(model.card.vl_template)
        base = QwenVLImagePreprocessor.for_model(model.model_dir)
        self.images = dataclasses.replace(
            base, min_pixels=GME_MIN_PIXELS, max_pixels=GME_MAX_PIXELS
        )
        module = model.module()
        self._vision = jax.jit(functools.partial(module.apply, method=QwenVLModel.encode_vision))
        self._fused = jax.jit(functools.partial(_fused_forward, module))

    def _tokens(self, item: EmbedItem, instruction: str | None, image_tokens: int) -> np.ndarray:
        t = self.template
        text = t["prefix"].format(instruction=instruction or t["instruction"])
        text += (t["image"] if item.image is not None else "") + (item.text or "") + t["suffix"]
        ids = np.asarray(self.tokenizer.encode(text).ids, dtype=np.int32)
        pad = self.config.image_token_id
        if item.image is not None:
            at = int(np.flatnonzero(ids == pad)[0])
            ids = np.concatenate([ids[:at], np.full(image_tokens, pad, np.int32), ids[at + 1 :]])
        if len(ids) > self.card.max_length:
            raise InvalidInputError(
                f"an item is {len(ids)} tokens with its image; the maximum is {self.card.max_length}"
            )
        return ids

    def _vision_features(self, grids, patches) -> list[np.ndarray]:
        """Every image's merged features: one image per row (attention is quadratic in a
        row's length, so images are not packed together), rows and lengths bucketed."""
        if not patches:
            return []
        merge = self.config.vision.merge_size**2
        rows, length = _bucket(len(patches), 1), _round_up(max(len(p) for p in patches), 64 * merge)
        features = self.config.vision.patch_features
        batch = np.zeros((rows, length, features), np.float32)
        positions = np.zeros((rows, length, 2), np.int32)
        segments = np.zeros((rows, length), np.int32)
        for r, (grid, image) in enumerate(zip(grids, patches, strict=True)):
            pos, seg = vision_positions([grid], self.config.vision.merge_size)
            batch[r, : len(image)], positions[r, : len(image)], segments[r, : len(image)] = (
                image,
                pos,
                seg,
            )
        merged = np.asarray(
            self._vision({"params": self.model.params}, batch, positions, segments), np.float32
        )
        return [merged[r, : len(image) // merge] for r, image in enumerate(patches)]

    def embed(self, items: Sequence[EmbedItem], instruction: str | None = None) -> np.ndarray:
        """One normalised vector per item (text, image or both; videos are not supported)."""
        return self.embed_counted(items, instruction)[0]

    def embed_counted(
        self, items: Sequence[EmbedItem], instruction: str | None = None
    ) -> tuple[np.ndarray, int]:
        """(one vector per item, the tokens embedded — image placeholders included)."""
        if any(item.video is not None for item in items):
            raise InvalidInputError("video items are not supported by this model yet")
        prepared = [self.images(gme_fetch(i.image)) if i.image is not None else None for i in items]
        grids = [p[1] for p in prepared if p is not None]
        features = iter(self._vision_features(grids, [p[0] for p in prepared if p is not None]))
        merge = self.config.vision.merge_size**2
        rows = []
        for item, image in zip(items, prepared, strict=True):
            count = 0 if image is None else int(np.prod(image[1])) // merge
            rows.append((self._tokens(item, instruction, count), next(features) if count else None))
        return self._run(rows), sum(len(ids) for ids, _ in rows)

    def _run(self, rows) -> np.ndarray:
        batch, length = _bucket(len(rows), 1), _round_up(max(len(ids) for ids, _ in rows), 64)
        width = self.config.text.hidden_size
        ids = np.full((batch, length), self.config.text.pad_token_id, np.int32)
        mask = np.zeros((batch, length), np.int32)
        feats = np.zeros((batch, length, width), np.float32)
        where = np.zeros((batch, length), bool)
        for r, (tokens, image) in enumerate(rows):
            ids[r, : len(tokens)], mask[r, : len(tokens)] = tokens, 1
            if image is not None:
                at = np.flatnonzero(tokens == self.config.image_token_id)
                feats[r, at], where[r, at] = image, True
        out = self._fused({"params": self.model.params}, ids, mask, feats, where)
        return np.asarray(out, dtype=np.float32)[: len(rows)]


def _fused_forward(module, variables, ids, mask, feats, where) -> jax.Array:
    hidden = module.apply(variables, ids, mask, feats, where, method=QwenVLModel.embed_fused)
    return l2_normalize(pool(hidden, mask, "last_token").astype(jnp.float32))
