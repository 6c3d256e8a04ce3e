"""Qwen2-VL's vision side vs transformers: the image processor's patches and grids (bit for bit,
five sizes incl. ones that hit min_pixels / max_pixels) and the vision tower's merged features
(1e-5, several images and a two-slice video in one padded batch)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from jaxembed.models.qwen2_vl_vision import QwenVisionConfig, QwenVisionTower, vision_positions
from jaxembed.qwen_vl_images import QwenVLImagePreprocessor
from jaxembed.weights import maps
from jaxembed.weights.convert_params import assemble_params
from jaxembed.weights.safetensors_io import SafetensorsCheckpoint
from tests.helpers import save_tiny_qwen2_vl

SIZES = [(64, 64), (300, 200), (20, 30), (1000, 90), (33, 517)]  # (width, height)
MIN_PIXELS, MAX_PIXELS = 56 * 56, 28 * 28 * 64


def _image(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_patches_and_grids_equal_the_transformers_processor():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    reference = Qwen2VLImageProcessorPil(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    ours = QwenVLImagePreprocessor(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    hit_min = hit_max = False
    for i, (width, height) in enumerate(SIZES):
        image = _image(width, height, i)
        want = reference(image)
        patches, grid = ours(image)
        assert list(grid) == want["image_grid_thw"].tolist()[0]
        np.testing.assert_array_equal(patches, np.asarray(want["pixel_values"]))
        area = grid[1] * grid[2] * 14 * 14
        hit_min |= width * height < MIN_PIXELS and area >= MIN_PIXELS
        hit_max |= width * height > MAX_PIXELS and area <= MAX_PIXELS
    assert hit_min and hit_max


@pytest.fixture(scope="module")
def qwen2_vl(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-qwen2-vl")
    return save_tiny_qwen2_vl(path, seed=7), path


def _tower(path):
    import json

    config = QwenVisionConfig.from_hf(
        json.loads((path / "config.json").read_text())["vision_config"]
    )
    module = QwenVisionTower(config)
    abstract = jax_eval_params(module, config)
    checkpoint = SafetensorsCheckpoint(path)
    try:
        params = assemble_params(
            checkpoint, maps.qwen_vision_rules(), abstract, num_layers=config.depth,
            dtype=np.dtype("float32"), ignored_prefixes=("model.", "lm_head."),
        )  # fmt: skip
    finally:
        checkpoint.close()
    return config, module, params


def jax_eval_params(module, config):
    import flax.linen as nn
    import jax

    n = config.merge_size**2
    shapes = (
        jax.ShapeDtypeStruct((1, n, config.patch_features), np.float32),
        jax.ShapeDtypeStruct((1, n, 2), np.int32),
        jax.ShapeDtypeStruct((1, n), np.int32),
    )
    return nn.meta.unbox(jax.eval_shape(module.init, jax.random.key(0), *shapes)["params"])


def test_vision_features_equal_the_transformers_tower(qwen2_vl):
    model, path = qwen2_vl
    config, module, params = _tower(path)
    processor = QwenVLImagePreprocessor(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    items = [processor(_image(w, h, i)) for i, (w, h) in enumerate(SIZES[:3])]
    frames = np.stack([processor.pixels(_image(60, 90, 10 + k)) for k in range(4)])
    items.append(processor.patchify(frames))  # a 4-frame "video": two temporal slices
    patches = np.concatenate([p for p, _ in items])
    grids = [g for _, g in items]
    with torch.no_grad():
        want = model.model.visual(
            torch.tensor(patches), grid_thw=torch.tensor(grids)
        ).pooler_output.numpy()
    positions, segments = vision_positions(grids, config.merge_size)
    pad = 64  # a padded bucket: padding patches are their own (zero) segment
    feed = (
        np.pad(patches, ((0, pad), (0, 0)))[None],
        np.pad(positions, ((0, pad), (0, 0)))[None],
        np.pad(segments, (0, pad))[None],
    )
    ours = np.asarray(module.apply({"params": params}, *feed))[0]
    merged = len(patches) // config.merge_size**2
    np.testing.assert_allclose(ours[:merged], want, atol=1e-5, rtol=0)
