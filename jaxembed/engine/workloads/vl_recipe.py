"""How a vision-language embedder reads an item — each model's *published* embedding code as data.

GME-Qwen2-VL (`gme_inference.py`) and Qwen3-VL-Embedding (`qwen3_vl_embedding.py`, with
`qwen_vl_utils`) both write an item as a chat turn, resize its image themselves before the
transformers processor sees it, and pool the last token; they differ in the details this
module holds, read from the card's `vl_template`:

- the prompt: GME `system(instruction) user([image] text) assistant <|endoftext|>`, Qwen3-VL-
  Embedding `system(instruction.) user([video][image] text) assistant` (its instruction gets
  a full stop when it lacks end punctuation);
- the image pre-resize: both `smart_resize` to multiples of patch × merge within their own
  pixel bounds (GME: 4..16384 × 28², then the processor's 256..1280 × 28²; Qwen3: 4..1800 ×
  32², and the processor told `do_resize=False`), GME clamping an elongated image's aspect
  ratio where `qwen_vl_utils` refuses it;
- positions: GME's code passes none (0..L−1 in every rotary section), Qwen3-VL-Embedding's
  runs transformers' 3-D M-RoPE positions (`mrope_positions`);
- video (Qwen3-VL-Embedding only): `qwen_vl_utils.fetch_video` — frames at `fps` within
  [min_frames, max_frames] (even counts), each resized with antialiased bicubic
  interpolation to `smart_resize` within the video pixel bounds — and the processor's
  timestamps `<t seconds>` before each temporal patch's tokens. The frames share a total
  pixel budget (`video_total_pixels`, the published code's MAX_TOTAL_PIXELS, which it passes
  for videos given as frame lists; for files it leaves qwen_vl_utils' 128k-token default,
  under which a 64-frame clip would outgrow the 8,192-token limit): a long clip's frames
  shrink so that the item fits, a short clip's are the same either way.
"""

from __future__ import annotations

import dataclasses
import math
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from jaxembed.errors import InvalidInputError, MediaError, ModelLoadError
from jaxembed.qwen_vl_images import MAX_ASPECT_RATIO, to_rgb

FRAME_FACTOR = 2  # qwen_vl_utils: frame counts are even (two frames per temporal patch)


@dataclasses.dataclass(frozen=True)
class VLRecipe:
    prefix: str  # with {instruction}
    image: str  # the image block (one <|image_pad|> the engine expands)
    suffix: str
    instruction: str  # the default instruction
    video: str = ""  # the video block; empty: the model takes no video
    punctuate_instruction: bool = False
    positions: str = "sequential"  # or "mrope"
    fetch_min_pixels: int = 4 * 28 * 28
    fetch_max_pixels: int = 16384 * 28 * 28
    aspect: str = "clamp"  # "refuse"
    alpha_on_white: bool = False  # transparency composited on white (else dropped)
    processor_resize: bool = True  # False: the processor is told do_resize=False
    processor_min_pixels: int = 256 * 28 * 28
    processor_max_pixels: int = 1280 * 28 * 28
    video_fps: float = 1.0
    video_min_frames: int = 4
    video_max_frames: int = 64
    video_min_pixels: int = 128 * 32 * 32
    video_max_pixels: int = 768 * 32 * 32
    video_total_pixels: int = 10 * 768 * 32 * 32  # shared by a clip's frames (module doc)

    @classmethod
    def from_card(cls, template: Mapping[str, Any]) -> VLRecipe:
        """The card's `vl_template`; a key or value this code does not know is a load error
        (a recipe half understood would embed differently from the model's own code)."""
        unknown = set(template) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ModelLoadError(f"vl_template has unknown keys {sorted(unknown)}")
        recipe = cls(**template)
        if recipe.positions not in ("sequential", "mrope") or recipe.aspect not in (
            "clamp",
            "refuse",
        ):
            raise ModelLoadError(
                f"vl_template: positions {recipe.positions!r} (sequential | mrope), "
                f"aspect {recipe.aspect!r} (clamp | refuse)"
            )
        return recipe

    def instruction_text(self, instruction: str | None) -> str:
        text = (instruction or "").strip() if self.punctuate_instruction else instruction
        if not text:
            return self.instruction
        if self.punctuate_instruction and not unicodedata.category(text[-1]).startswith("P"):
            text += "."
        return text

    def prompt(self, text: str | None, image: bool, video: bool, instruction: str | None) -> str:
        """The item's chat turn with one placeholder per image / video."""
        body = (self.video if video else "") + (self.image if image else "") + (text or "")
        return (
            self.prefix.format(instruction=self.instruction_text(instruction)) + body + self.suffix
        )

    def fetch(self, image: Image.Image, factor: int) -> Image.Image:
        """The model code's own resize before the processor (module doc)."""
        image = to_rgb(image)
        height, width = fetch_size(
            image.height,
            image.width,
            factor,
            self.fetch_min_pixels,
            self.fetch_max_pixels,
            self.aspect,
        )
        return image.resize((width, height))  # PIL's default filter, as both codes call it


def fetch_size(
    height: int, width: int, factor: int, min_pixels: int, max_pixels: int, aspect: str
) -> tuple[int, int]:
    """`qwen_vl_utils.smart_resize` (= GME's `_smart_resize`): round to `factor` (at least one
    factor), floor into max_pixels or ceil into min_pixels; then GME caps the aspect ratio at
    200 where qwen_vl_utils refuses such an image up front."""
    if aspect == "refuse" and max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise InvalidInputError(
            f"an image of {width}x{height} is more elongated than {MAX_ASPECT_RATIO}:1",
            param="input",
        )
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = math.floor(height / beta / factor) * factor
        w_bar = math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    if max(h_bar, w_bar) / min(h_bar, w_bar) > MAX_ASPECT_RATIO:
        h_bar, w_bar = (
            (w_bar * MAX_ASPECT_RATIO, w_bar)
            if h_bar > w_bar
            else (h_bar, h_bar * MAX_ASPECT_RATIO)
        )
    return h_bar, w_bar


def video_frame_indices(
    recipe: VLRecipe, total: int, fps: float | None, max_frames: int | None = None
) -> list[int]:
    """`qwen_vl_utils.smart_nframes` + its sampling: total / fps × the recipe's fps frames,
    within [min_frames, max_frames] and the video's own count, floored to an even number,
    spread with `round(linspace(0, total − 1, n))`. `max_frames`: a request's own cap."""
    if fps is None or fps <= 0:
        raise MediaError("the video does not state its frame rate", code="invalid_video")
    cap = recipe.video_max_frames if max_frames is None else max_frames
    if cap < FRAME_FACTOR:
        raise InvalidInputError(
            f"video_frames must be at least {FRAME_FACTOR} for this model (frames go in pairs)",
            param="video_frames",
        )
    low = _ceil_even(recipe.video_min_frames)
    high = (cap // FRAME_FACTOR) * FRAME_FACTOR
    wanted = min(max(total / fps * recipe.video_fps, low), high, total)
    count = int(wanted // FRAME_FACTOR) * FRAME_FACTOR
    if count < FRAME_FACTOR:
        raise MediaError(
            f"the video has {total} frame(s); this model needs at least {FRAME_FACTOR}",
            code="invalid_video",
        )
    return np.rint(np.linspace(0, total - 1, count)).astype(int).tolist()


def _ceil_even(n: float) -> int:
    return math.ceil(n / FRAME_FACTOR) * FRAME_FACTOR


def video_frame_size(recipe: VLRecipe, height: int, width: int, frames: int, factor: int):
    """`fetch_video`'s frame size: `smart_resize` within [video_min_pixels, max_pixels],
    max_pixels the smaller of video_max_pixels and the frame's share of video_total_pixels
    (two frames per temporal patch), never below 1.05 × the minimum."""
    share = recipe.video_total_pixels / frames * FRAME_FACTOR
    high = max(min(recipe.video_max_pixels, share), int(recipe.video_min_pixels * 1.05))
    return fetch_size(height, width, factor, recipe.video_min_pixels, high, "refuse")


def resize_frames(frames: Sequence[Image.Image], height: int, width: int) -> np.ndarray:
    """RGB frames → float32 [T, 3, height, width], as torchvision's tensor resize does it
    (bicubic, a = −0.5, antialiased when shrinking: float32, width then height, clamped to
    0..255 and rounded half to even — values stay whole numbers)."""
    stack = np.stack([np.asarray(to_rgb(f), np.float32) for f in frames])  # [T, H, W, 3]
    columns = _aa_bicubic_weights(stack.shape[2], width)
    rows = _aa_bicubic_weights(stack.shape[1], height)
    wide = np.einsum("thwc,xw->thxc", stack, columns, dtype=np.float32)
    out = np.einsum("thxc,yh->tyxc", wide, rows, dtype=np.float32)
    out = np.rint(np.clip(out, 0, 255))
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2), dtype=np.float32)


def _aa_bicubic_weights(size_in: int, size_out: int) -> np.ndarray:
    """[size_out, size_in] interpolation weights of PyTorch's `_upsample_bicubic2d_aa`
    (PIL's algorithm: the cubic kernel stretched by the scale when shrinking, normalised)."""
    scale = size_in / size_out
    support = 2.0 * scale if scale >= 1.0 else 2.0
    inv = 1.0 / scale if scale >= 1.0 else 1.0
    weights = np.zeros((size_out, size_in), np.float32)
    for i in range(size_out):
        center = scale * (i + 0.5)
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), size_in)
        taps = np.array([_cubic((j - center + 0.5) * inv) for j in range(lo, hi)], np.float32)
        weights[i, lo:hi] = taps / taps.sum()
    return weights


def _cubic(x: float, a: float = -0.5) -> float:
    x = abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    if x < 2.0:
        return (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return 0.0


def frame_timestamps(indices: Sequence[int], fps: float, temporal_patch: int) -> list[float]:
    """Qwen3VLProcessor's `_calculate_timestamps`: each temporal patch's mean frame time
    (indices padded with the last one to a whole patch)."""
    padded = list(indices) + [indices[-1]] * (-len(indices) % temporal_patch)
    times = [i / fps for i in padded]
    return [
        (times[i] + times[i + temporal_patch - 1]) / 2 for i in range(0, len(times), temporal_patch)
    ]


def mrope_positions(
    types: np.ndarray, grids: Sequence[tuple[int, int, int]], merge: int
) -> np.ndarray:
    """transformers' Qwen3-VL `get_rope_index` for one row: `types` 0 text / 1 image / 2 video
    per token, `grids` (1, h, w) in patches for each run of vision tokens, in order. Text runs
    count on from the last position in all three sections; a vision run takes (start, start +
    row, start + column) and moves the count on by max(rows, columns) → [3, L]."""
    out, position, grid = [], 0, iter(grids)
    bounds = np.flatnonzero(np.diff(types)) + 1
    for run in np.split(types, bounds):
        if run[0] == 0:
            out.append(np.broadcast_to(np.arange(len(run)) + position, (3, len(run))))
            position += len(run)
            continue
        t, h, w = next(grid)
        rows, cols = h // merge, w // merge
        if t != 1 or rows * cols != len(run):
            raise ValueError(f"a vision run of {len(run)} tokens does not fit grid {(t, h, w)}")
        r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
        out.append(np.stack([np.zeros(rows * cols, int), r.ravel(), c.ravel()]) + position)
        position += max(rows, cols)
    return np.concatenate(out, axis=1).astype(np.int32)
