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
from tests.helpers import gme_reference, save_tiny_qwen2_vl

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
            checkpoint, maps.qwen_vision_rules(config), abstract, num_layers=config.depth,
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


def test_gme_items_equal_the_published_recipe(qwen2_vl):
    from jaxembed.api import Embedder
    from jaxembed.engine.request.jobs import EmbedItem

    model, path = qwen2_vl
    texts = ["a dog catching a frisbee", None, "two cats on a red sofa", "a city at night"]
    images = [None, _image(90, 60, 1), _image(300, 200, 2), None]
    want, want_ids = gme_reference(model, path, texts, images)
    embedder = Embedder.from_pretrained(path, compile_cache_dir=False)
    items = [EmbedItem(text=t, image=i) for t, i in zip(texts, images, strict=True)]
    ours = embedder.embed_items(items)
    assert np.sum(ours * want, axis=1).min() >= 0.99999
    # Several items of different sizes in one batch equal each alone.
    for item, vector in zip(items, ours, strict=True):
        np.testing.assert_allclose(embedder.embed_items([item])[0], vector, atol=1e-5)
    # The token rows equal the processor's (image placeholders expanded alike).
    for row, item in enumerate(items):
        tokens = embedder.fused._prepare(item, None).ids
        np.testing.assert_array_equal(tokens, want_ids[row, : len(tokens)].numpy())


def test_gme_bfloat16_and_instruction(qwen2_vl):
    from jaxembed.api import Embedder
    from jaxembed.engine.request.jobs import EmbedItem

    model, path = qwen2_vl
    items = [EmbedItem(text="a red bicycle"), EmbedItem(image=_image(120, 80, 3), text="bike")]
    full = Embedder.from_pretrained(path, compile_cache_dir=False)
    half = Embedder.from_pretrained(path, dtype="bfloat16", compile_cache_dir=False)
    want = full.embed_items(items)
    assert np.sum(half.embed_items(items) * want, axis=1).min() >= 0.999
    instruction = "Find an image that matches the given text."
    asked, _ = gme_reference(model, path, ["a red bicycle"], [None], instruction)
    got = full.embed_items(items[:1], instruction=instruction)
    assert float(np.sum(got * asked)) >= 0.99999


def test_gme_conversion_gives_identical_vectors(qwen2_vl, tmp_path):
    from jaxembed.api import Embedder
    from jaxembed.engine.request.jobs import EmbedItem
    from jaxembed.weights.convert import convert

    _, path = qwen2_vl
    convert(path, tmp_path / "out", show_progress=False)
    items = [EmbedItem(text="a kite"), EmbedItem(image=_image(70, 50, 4), text="kite")]
    converted = Embedder.from_pretrained(tmp_path / "out", compile_cache_dir=False)
    assert converted.model.source_format == "orbax" and converted.card.vl_template
    want = Embedder.from_pretrained(path, compile_cache_dir=False).embed_items(items)
    np.testing.assert_array_equal(converted.embed_items(items), want)


def test_plan_counts_gme_qwen2_vl_2b():
    """The shipped card's shapes (Qwen2-VL-2B): the plan's count equals transformers'
    Qwen2VLForConditionalGeneration (tied LM head), the model card's 2.21B."""
    import transformers

    from jaxembed.families import model_family
    from jaxembed.parallel.plan import plan_parameters
    from jaxembed.registry import find_card

    card = find_card("gme-qwen2-vl-2b-instruct")
    family, ours = model_family(card.architecture, card)
    counted = plan_parameters(family, ours, 1, 1, "bfloat16").parameters
    config = transformers.Qwen2VLConfig(**card.architecture, tie_word_embeddings=True)
    with torch.device("meta"):
        reference = transformers.Qwen2VLForConditionalGeneration(config)
    assert counted == sum(p.numel() for p in reference.parameters()) == 2_208_985_600


def test_qwen3_vision_tower_with_deepstack_equals_transformers(tmp_path):
    """Qwen3-VL's tower: biased patch embedding, the learned position table resampled per image
    (bilinear, align_corners), gelu-tanh MLPs, and the deep-stack mergers' features."""
    import json

    import flax.linen as nn
    import jax

    from jaxembed.models.qwen2_vl_vision import position_interpolation
    from tests.helpers import save_tiny_qwen3_vl

    model = save_tiny_qwen3_vl(tmp_path, seed=11)
    hf = json.loads((tmp_path / "config.json").read_text())["vision_config"]
    config = QwenVisionConfig.from_qwen3(hf)
    assert config.deepstack == (0, 2) and config.position_side == 8
    processor = QwenVLImagePreprocessor(
        patch_size=16, min_pixels=32 * 32, max_pixels=32 * 32 * 64, mean=(0.5,) * 3, std=(0.5,) * 3
    )
    items = [
        processor(_image(w, h, i)) for i, (w, h) in enumerate([(64, 64), (160, 96), (40, 200)])
    ]
    patches = np.concatenate([p for p, _ in items])
    grids = [g for _, g in items]
    with torch.no_grad():
        out = model.model.visual(torch.tensor(patches), grid_thw=torch.tensor(grids))
    positions, segments = vision_positions(grids, config.merge_size)
    indices, weights = position_interpolation(grids, config.merge_size, config.position_side)
    module = QwenVisionTower(config)
    n = len(patches)
    shapes = [(1, n, config.patch_features), (1, n, 2), (1, n), (1, n, 4), (1, n, 4)]
    dtypes = [np.float32, np.int32, np.int32, np.int32, np.float32]
    specs = [jax.ShapeDtypeStruct(s, d) for s, d in zip(shapes, dtypes, strict=True)]
    init = lambda *a: module.init(jax.random.key(0), *a[:3], interpolation=a[3:])  # noqa: E731
    abstract = nn.meta.unbox(jax.eval_shape(init, *specs)["params"])
    checkpoint = SafetensorsCheckpoint(tmp_path)
    try:
        params = assemble_params(
            checkpoint, maps.qwen_vision_rules(config, "model.visual"), abstract,
            num_layers=config.depth, dtype=np.dtype("float32"),
            ignored_prefixes=("model.language_model.", "lm_head."),
        )  # fmt: skip
    finally:
        checkpoint.close()
    merged, stacked = module.apply(
        {"params": params}, patches[None], positions[None], segments[None],
        interpolation=(indices[None], weights[None]),
    )  # fmt: skip
    np.testing.assert_allclose(np.asarray(merged)[0], out.pooler_output.numpy(), atol=1e-5)
    for ours, theirs in zip(np.asarray(stacked)[:, 0], out.deepstack_features, strict=True):
        np.testing.assert_allclose(ours, theirs.numpy(), atol=1e-5)
