"""Images → Qwen2-VL / Qwen3-VL vision patches, step for step as transformers' PIL processor.

Qwen's vision towers take an image at (nearly) its own resolution: `smart_resize` picks the
size nearest the original whose sides are multiples of patch × merge (28 px for Qwen2-VL)
and whose area lies within [min_pixels, max_pixels]; the image is resized there with PIL's
bicubic filter, rescaled (float64, then float32) and normalised, and cut into patches of
`temporal_patch_size` × `patch_size`² (an image repeats itself over the temporal axis),
ordered block by block so that each `merge_size`² group of neighbours is consecutive — the
order the tower's patch merger reads them in. Matching `Qwen2VLImageProcessorPil` exactly is
what makes an image embedded here equal to one embedded with transformers.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from jaxembed.errors import InvalidInputError, ModelLoadError
from jaxembed.images import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PREPROCESSOR_FILENAME, to_rgb

MAX_ASPECT_RATIO = 200  # the processors refuse anything more elongated


def smart_resize(
    height: int, width: int, factor: int, min_pixels: int, max_pixels: int
) -> tuple[int, int]:
    """(height, width): multiples of `factor`, area within [min_pixels, max_pixels], aspect
    ratio as close to the original as those allow (the processors' rounding, exactly)."""
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise InvalidInputError(
            f"an image of {width}x{height} is more elongated than {MAX_ASPECT_RATIO}:1",
            param="input",
        )
    h_bar, w_bar = round(height / factor) * factor, round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


@dataclasses.dataclass(frozen=True)
class QwenVLImagePreprocessor:
    """What `Qwen2VLImageProcessor` does, as data (from `preprocessor_config.json`)."""

    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    min_pixels: int = 56 * 56
    max_pixels: int = 28 * 28 * 1280
    rescale_factor: float = 1 / 255
    mean: tuple[float, ...] = OPENAI_CLIP_MEAN
    std: tuple[float, ...] = OPENAI_CLIP_STD
    resize: bool = True  # False: `do_resize=False` (the caller sized the image already)

    @classmethod
    def from_hf(cls, config: Mapping[str, Any]) -> QwenVLImagePreprocessor:
        size = config.get("size") or {}
        return cls(
            patch_size=int(config.get("patch_size", 14)),
            temporal_patch_size=int(config.get("temporal_patch_size", 2)),
            merge_size=int(config.get("merge_size", 2)),
            min_pixels=int(config.get("min_pixels") or size.get("shortest_edge") or 56 * 56),
            max_pixels=int(config.get("max_pixels") or size.get("longest_edge") or 28 * 28 * 1280),
            rescale_factor=float(config.get("rescale_factor", 1 / 255)),
            mean=tuple(float(m) for m in config.get("image_mean", OPENAI_CLIP_MEAN)),
            std=tuple(float(s) for s in config.get("image_std", OPENAI_CLIP_STD)),
        )

    @classmethod
    def for_model(cls, model_dir: str | Path, **defaults: Any) -> QwenVLImagePreprocessor:
        """From the directory's `preprocessor_config.json`; without one, `defaults` (the
        vision tower's own patch sizes, the family's normalisation) over the class's."""
        path = Path(model_dir) / PREPROCESSOR_FILENAME
        if not path.is_file():
            return cls(**defaults)
        try:
            return cls.from_hf(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError) as e:
            raise ModelLoadError(f"{path} is not valid JSON: {e}") from None

    @property
    def factor(self) -> int:
        return self.patch_size * self.merge_size

    @property
    def patch_features(self) -> int:
        return 3 * self.temporal_patch_size * self.patch_size**2

    def pixels(self, image: Image.Image) -> np.ndarray:
        """One image → float32 [3, H, W] at its smart-resized size, rescaled and normalised."""
        image = to_rgb(image)
        if self.resize:
            height, width = smart_resize(
                image.height, image.width, self.factor, self.min_pixels, self.max_pixels
            )
            image = image.resize((width, height), resample=Image.Resampling.BICUBIC)
        elif image.height % self.factor or image.width % self.factor:
            raise InvalidInputError(
                f"an image of {image.width}x{image.height} is not in whole {self.factor}-pixel blocks"
            )
        pixels = (np.asarray(image).astype(np.float64) * self.rescale_factor).astype(np.float32)
        mean, std = np.asarray(self.mean, np.float32), np.asarray(self.std, np.float32)
        return np.ascontiguousarray(((pixels - mean) / std).transpose(2, 0, 1))

    def patchify(self, frames_tchw: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int]]:
        """[T, 3, H, W] (T a multiple of temporal_patch_size) → ([N, patch_features], grid thw)."""
        t, channels, height, width = frames_tchw.shape
        p, m, tp = self.patch_size, self.merge_size, self.temporal_patch_size
        grid_t, grid_h, grid_w = t // tp, height // p, width // p
        patches = frames_tchw.reshape(grid_t, tp, channels, grid_h // m, m, p, grid_w // m, m, p)
        patches = patches.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
        flat = patches.reshape(grid_t * grid_h * grid_w, channels * tp * p * p)
        return np.ascontiguousarray(flat, dtype=np.float32), (grid_t, grid_h, grid_w)

    def video(self, frames_tchw: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int]]:
        """Resized frames (float32 whole numbers [T, 3, H, W]) → patches and grid, as the
        video processor does it: rescale and normalise fused into (x − 255·mean) / (255·std)
        in float32, the last frame repeated to a whole temporal patch."""
        scale = np.float32(1 / self.rescale_factor)
        mean = (np.asarray(self.mean, np.float32) * scale)[:, None, None]
        std = (np.asarray(self.std, np.float32) * scale)[:, None, None]
        pixels = (frames_tchw.astype(np.float32) - mean) / std
        if pad := -len(pixels) % self.temporal_patch_size:
            pixels = np.concatenate([pixels, np.repeat(pixels[-1:], pad, axis=0)])
        return self.patchify(pixels)

    def __call__(self, image: Image.Image) -> tuple[np.ndarray, tuple[int, int, int]]:
        """One image → (patches [N, patch_features] float32, grid (1, h, w) in patches)."""
        pixels = self.pixels(image)
        return self.patchify(np.repeat(pixels[None], self.temporal_patch_size, axis=0))
