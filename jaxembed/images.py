"""Image → model pixels, step for step as the model's Hugging Face image processor does it.

The steps and their constants come from the model's own
`preprocessor_config.json` (one place for that fact), and each step repeats
the arithmetic of transformers' PIL backend: RGB conversion compositing
transparency onto white, a shortest-edge resize with PIL's filter (the long
edge truncated with `int()`), an integer-offset centre crop (zero-padded when
the image is smaller), rescale in float64 then float32, per-channel
normalisation, channels first. Matching it exactly is what makes an image
embedded here equal to one embedded with `transformers`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from jaxembed.errors import ModelLoadError

PREPROCESSOR_FILENAME = "preprocessor_config.json"
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclasses.dataclass(frozen=True)
class ImagePreprocessor:
    """What `CLIPImageProcessor` does, as data. `size`: shortest edge, or (height, width)."""

    image_size: tuple[int, int]  # what the vision tower takes (height, width)
    shortest_edge: int | None = None
    resize_to: tuple[int, int] | None = None  # when the config gives height/width instead
    do_resize: bool = True
    resample: int = Image.Resampling.BICUBIC
    do_center_crop: bool = True
    crop_size: tuple[int, int] | None = None
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD
    do_convert_rgb: bool = True

    @classmethod
    def for_model(cls, model_dir: str | Path, image_size: int) -> ImagePreprocessor:
        """From `<model_dir>/preprocessor_config.json`; CLIP's defaults at `image_size` without one."""
        path = Path(model_dir) / PREPROCESSOR_FILENAME
        if not path.is_file():
            return cls(
                image_size=(image_size, image_size),
                shortest_edge=image_size,
                crop_size=(image_size, image_size),
            )
        try:
            config = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ModelLoadError(f"{path} is not valid JSON: {e}") from None
        return cls.from_hf(config, image_size)

    @classmethod
    def from_hf(cls, config: Mapping[str, Any], image_size: int) -> ImagePreprocessor:
        size = config.get("size", image_size)
        shortest, resize_to = None, None
        if isinstance(size, int):
            shortest = size
        elif "shortest_edge" in size:
            shortest = int(size["shortest_edge"])
        else:
            resize_to = (int(size["height"]), int(size["width"]))
        crop = config.get("crop_size", image_size)
        crop_hw = (
            (crop, crop) if isinstance(crop, int) else (int(crop["height"]), int(crop["width"]))
        )
        out = cls(
            image_size=(image_size, image_size),
            shortest_edge=shortest,
            resize_to=resize_to,
            do_resize=bool(config.get("do_resize", True)),
            resample=int(config.get("resample", Image.Resampling.BICUBIC)),
            do_center_crop=bool(config.get("do_center_crop", True)),
            crop_size=crop_hw,
            do_rescale=bool(config.get("do_rescale", True)),
            rescale_factor=float(config.get("rescale_factor", 1 / 255)),
            do_normalize=bool(config.get("do_normalize", True)),
            mean=_triple(config.get("image_mean", OPENAI_CLIP_MEAN)),
            std=_triple(config.get("image_std", OPENAI_CLIP_STD)),
            do_convert_rgb=bool(config.get("do_convert_rgb", True)),
        )
        if out.output_size() != out.image_size:
            raise ModelLoadError(
                f"the image processor makes {out.output_size()} images but the vision tower takes "
                f"{out.image_size}"
            )
        return out

    def output_size(self) -> tuple[int, int]:
        if self.do_center_crop and self.crop_size:
            return self.crop_size
        if self.resize_to:
            return self.resize_to
        return self.image_size

    def __call__(self, image: Image.Image) -> np.ndarray:
        """One image → float32 [3, H, W] ready for the vision tower."""
        if self.do_convert_rgb:
            image = to_rgb(image)
        if self.do_resize:
            image = image.resize(self._resized_wh(image.size), resample=self.resample)
        array_hwc = np.asarray(image)
        if array_hwc.ndim == 2:
            array_hwc = array_hwc[..., None]
        if self.do_center_crop and self.crop_size:
            array_hwc = center_crop(array_hwc, self.crop_size)
        pixels = array_hwc
        if self.do_rescale:
            pixels = (pixels.astype(np.float64) * self.rescale_factor).astype(np.float32)
        pixels = pixels.astype(np.float32, copy=False)
        if self.do_normalize:
            mean = np.asarray(self.mean, dtype=np.float32)
            std = np.asarray(self.std, dtype=np.float32)
            pixels = (pixels - mean) / std
        return np.ascontiguousarray(pixels.transpose(2, 0, 1), dtype=np.float32)

    def _resized_wh(self, size_wh: tuple[int, int]) -> tuple[int, int]:
        if self.resize_to is not None:
            h, w = self.resize_to
            return w, h
        width, height = size_wh
        short, long = (width, height) if width <= height else (height, width)
        edge = self.shortest_edge or min(self.image_size)
        new_long = int(edge * long / short)
        return (edge, new_long) if width <= height else (new_long, edge)


def _triple(values: float | Sequence[float]) -> tuple[float, float, float]:
    if isinstance(values, int | float):
        return (float(values),) * 3
    return tuple(float(v) for v in values)  # type: ignore[return-value]


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB, with any transparency composited onto white (as transformers' convert_to_rgb)."""
    has_alpha = "A" in image.getbands() or image.info.get("transparency") is not None
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def center_crop(array_hwc: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Integer-offset centre crop; an image smaller than the crop is zero-padded around it."""
    height, width = array_hwc.shape[:2]
    crop_h, crop_w = size_hw
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    if top >= 0 and left >= 0:
        return array_hwc[top : top + crop_h, left : left + crop_w]
    # Pad to at least the crop size (transformers' offsets: ceil for the pad, floor for the crop).
    new_h, new_w = max(crop_h, height), max(crop_w, width)
    padded = np.zeros((new_h, new_w, array_hwc.shape[2]), dtype=array_hwc.dtype)
    top_pad, left_pad = math.ceil((new_h - height) / 2), math.ceil((new_w - width) / 2)
    padded[top_pad : top_pad + height, left_pad : left_pad + width] = array_hwc
    top, left = top + top_pad, left + left_pad
    return padded[max(0, top) : min(new_h, top + crop_h), max(0, left) : min(new_w, left + crop_w)]
