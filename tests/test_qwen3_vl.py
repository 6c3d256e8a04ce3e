"""Qwen3-VL-Embedding vs its published recipe computed with transformers' `Qwen3VLModel`:
text, image, text+image and video items (3-D M-RoPE positions, deep-stack features), batched
= alone, the preprocessing steps (pre-resize, frame sampling and resizing, timestamps), bf16,
instructions, conversion and the shipped card's parameter count."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from jaxembed.card import QWEN3_VL_EMBEDDING_TEMPLATE
from jaxembed.engine.request.jobs import EmbedItem
from jaxembed.engine.workloads.qwen_vl import VideoClip
from jaxembed.engine.workloads.vl_recipe import (
    VLRecipe,
    mrope_positions,
    resize_frames,
    video_frame_indices,
)
from jaxembed.errors import InvalidInputError
from tests.helpers import (
    qwen3_vl_embedding_reference,
    qwen_vl_utils_fetch_image,
    qwen_vl_utils_video_frames,
    save_tiny_qwen3_vl,
)

RECIPE = VLRecipe.from_card(QWEN3_VL_EMBEDDING_TEMPLATE)


def _image(width: int, height: int, seed: int, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = 4 if mode == "RGBA" else 3
    pixels = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
    image = Image.fromarray(pixels, "RGBA" if mode == "RGBA" else "RGB")
    return image.convert(mode) if mode == "P" else image


def _frames(count: int, width: int, height: int, seed: int) -> list[Image.Image]:
    """A moving gradient (smooth, as video is) with noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    frames = []
    for t in range(count):
        base = np.stack([(x * 4 + t * 9) % 256, (y * 5 + t * 3) % 256, (x + y + t * 20) % 256], -1)
        noisy = base + rng.integers(-20, 21, base.shape)
        frames.append(Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)))
    return frames


def _clip(frames, fps):
    indices = video_frame_indices(RECIPE, len(frames), fps)
    return VideoClip([frames[i] for i in indices], indices, fps)


@pytest.fixture(scope="module")
def qwen3_vl(tmp_path_factory):
    from jaxembed.api import Embedder

    path = tmp_path_factory.mktemp("tiny-qwen3-vl")
    model = save_tiny_qwen3_vl(path, seed=5)
    return model, path, Embedder.from_pretrained(path, compile_cache_dir=False)


def test_preprocessing_equals_the_published_steps():
    """The pre-resize (qwen_vl_utils `fetch_image`: sizes and pixels, incl. min/max-pixel and
    RGBA cases), the frame sample and the frames' antialiased bicubic resize."""
    sizes = [
        (64, 64, "RGB"),
        (30, 20, "RGBA"),
        (2000, 1500, "RGB"),
        (50, 900, "RGB"),
        (300, 170, "P"),
    ]
    for i, (w, h, mode) in enumerate(sizes):
        image = _image(w, h, i, mode)
        want = qwen_vl_utils_fetch_image(image)
        ours = RECIPE.fetch(image, 32)
        assert ours.size == want.size
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(want))
    with pytest.raises(InvalidInputError, match="elongated"):  # qwen_vl_utils refuses > 200:1
        RECIPE.fetch(_image(2010, 10, 0), 32)
    # The processor steps with do_resize=False: the image processor's pixels bit for bit, and
    # the video processor's patchify on its fused normalisation.
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    from jaxembed.qwen_vl_images import QwenVLImagePreprocessor

    ours = QwenVLImagePreprocessor(patch_size=16, mean=(0.5,) * 3, std=(0.5,) * 3, resize=False)
    reference = Qwen2VLImageProcessorPil(
        patch_size=16, image_mean=[0.5] * 3, image_std=[0.5] * 3, do_resize=False
    )
    fetched = RECIPE.fetch(_image(300, 170, 5), 32)
    want = reference(fetched)
    patches, grid = ours(fetched)
    assert [list(grid)] == want["image_grid_thw"].tolist()
    np.testing.assert_array_equal(patches, np.asarray(want["pixel_values"]))
    frames = _frames(10, 40, 56, 0)
    resized, _ = qwen_vl_utils_video_frames(frames[:5], fps=2.0)  # 4 frames sampled
    patches, grid = ours.video(resized.numpy())
    (theirs,) = Qwen3VLVideoProcessor.patchify(None, ((resized - 127.5) / 127.5)[None], 16, 2, 2)[
        :1
    ]
    np.testing.assert_array_equal(patches, theirs[0].numpy())
    assert grid == (2, resized.shape[2] // 16, resized.shape[3] // 16)
    for fps, total in [(4.0, 10), (1.0, 10), (25.0, 200), (30.0, 3)]:
        _, want_idx = qwen_vl_utils_video_frames([frames[0]] * total, fps=fps)
        assert video_frame_indices(RECIPE, total, fps) == want_idx
    resized, idx = qwen_vl_utils_video_frames(frames, fps=4.0)
    ours = resize_frames([frames[i] for i in idx], *resized.shape[2:])
    differ = np.abs(ours - resized.numpy())
    assert differ.max() <= 1 and (differ > 0).mean() < 1e-3  # float rounding at .5 only


def test_mrope_positions_equal_get_rope_index(qwen3_vl):
    model, _, _ = qwen3_vl
    types = np.array([0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 2, 2, 2, 2, 0, 2, 2, 2, 2, 0])
    grids = [(1, 4, 6), (1, 4, 4), (1, 4, 4)]
    ids = torch.tensor(types)[None] + 100
    want, _ = model.model.get_rope_index(
        ids,
        mm_token_type_ids=torch.tensor(types)[None],
        image_grid_thw=torch.tensor(grids[:1]),
        video_grid_thw=torch.tensor([(2, 4, 4)]),
    )
    np.testing.assert_array_equal(mrope_positions(types, grids, 2), want[:, 0].numpy())


def test_items_equal_the_published_recipe(qwen3_vl):
    model, path, embedder = qwen3_vl
    frames = _frames(10, 40, 56, 1)
    specs = [
        {"text": "a dog catching a frisbee"},
        {"image": _image(90, 60, 1)},
        {"text": "two cats on a red sofa", "image": _image(200, 130, 2)},
        {"video": (frames, 4.0)},
        {"text": "a clip of waves", "video": (frames[:8], 2.0)},
    ]
    want, want_ids = qwen3_vl_embedding_reference(model, path, specs)
    items = [
        EmbedItem(
            text=s.get("text"),
            image=s.get("image"),
            video=_clip(*s["video"]) if "video" in s else None,
        )
        for s in specs
    ]
    engine = embedder.fused
    ours = engine.embed(items)
    assert np.sum(ours * want, axis=1).min() >= 0.99999
    for row, item in enumerate(items):  # token rows equal the processor's
        tokens = engine._prepare(item, None).ids
        np.testing.assert_array_equal(tokens, want_ids[row, : len(tokens)].numpy())
    for item, vector in zip(items, ours, strict=True):  # batched = alone
        np.testing.assert_allclose(engine.embed([item])[0], vector, atol=1e-5)


def test_bfloat16_instruction_and_conversion(qwen3_vl, tmp_path):
    from jaxembed.api import Embedder
    from jaxembed.weights.convert import convert

    model, path, full = qwen3_vl
    items = [
        EmbedItem(text="a red bicycle"),
        EmbedItem(image=_image(120, 80, 3), text="bike"),
        EmbedItem(video=_clip(_frames(6, 40, 40, 4), 3.0)),
    ]
    want = full.embed_items(items)
    half = Embedder.from_pretrained(path, dtype="bfloat16", compile_cache_dir=False)
    assert np.sum(half.embed_items(items) * want, axis=1).min() >= 0.999
    instruction = "Retrieve images or text relevant to the user's query"  # gets its full stop
    asked, _ = qwen3_vl_embedding_reference(model, path, [{"text": "a red bicycle"}], instruction)
    got = full.embed_items(items[:1], instruction=instruction)
    assert float(np.sum(got * asked)) >= 0.99999
    convert(path, tmp_path / "out", show_progress=False)
    converted = Embedder.from_pretrained(tmp_path / "out", compile_cache_dir=False)
    np.testing.assert_array_equal(converted.embed_items(items), want)


def test_plan_counts_qwen3_vl_embedding_2b():
    """The shipped card's shapes (Qwen3-VL-2B): the plan's count equals transformers'
    Qwen3VLModel built from them (no LM head: an embedder has none)."""
    import transformers

    from jaxembed.families import model_family
    from jaxembed.parallel.plan import plan_parameters
    from jaxembed.registry import find_card

    card = find_card("qwen3-vl-embedding-2b")
    family, ours = model_family(card.architecture, card)
    counted = plan_parameters(family, ours, 1, 1, "bfloat16").parameters
    config = transformers.Qwen3VLConfig(**card.architecture)
    with torch.device("meta"):
        reference = transformers.Qwen3VLModel(config)
    assert counted == sum(p.numel() for p in reference.parameters()) == 2_127_532_032


def test_concurrent_requests_share_batches_through_the_service(qwen3_vl):
    """Items of concurrent requests (different priorities) are batched together by the
    model's vision-language batcher and come back to the right request."""
    import asyncio

    from jaxembed.engine.request.jobs import EmbedJob, EmbedOptions
    from jaxembed.engine.service.backend import ServiceHooks
    from jaxembed.engine.service.rows import local_service

    _, _, embedder = qwen3_vl
    batches = []
    service = local_service(embedder, hooks=ServiceHooks(on_batch=batches.append))
    jobs = [
        [EmbedItem(text="a dog"), EmbedItem(image=_image(60, 40, 7))],
        [EmbedItem(text="a cat", image=_image(40, 60, 8))],
        [EmbedItem(text="waves"), EmbedItem(video=_clip(_frames(6, 40, 40, 9), 3.0))],
    ]
    want = [embedder.fused.embed(items) for items in jobs]

    async def all_at_once():
        tasks = [
            asyncio.create_task(service.embed(EmbedJob(j, EmbedOptions(priority=i % 2))))
            for i, j in enumerate(jobs)
        ]
        while service.backend.fused.queued_requests < len(
            jobs
        ):  # all queued before the device starts
            await asyncio.sleep(0.01)
        service.start(warmup=False)
        return await asyncio.gather(*tasks)

    try:
        results = asyncio.run(all_at_once())
    finally:
        assert service.close(timeout=30)
    for result, expected in zip(results, want, strict=True):
        np.testing.assert_allclose(result.vectors, expected, atol=1e-5)
    assert max(b.requests for b in batches) > 1  # rows of several requests in one batch


def test_plan_compiles_the_vision_and_decoder_programs(qwen3_vl):
    """`jaxembed plan` for a vision-language card: each program's memory per bucket; a bigger
    vision bucket needs more."""
    from jaxembed.engine.batching.buckets import Bucket
    from jaxembed.engine.workloads.plan_vl import plan_vl_memory
    from jaxembed.parallel.mesh import MeshShape

    _, _, embedder = qwen3_vl
    model = embedder.model
    planned = plan_vl_memory(
        model.family, model.config, model.card, "float32", MeshShape(1, 1), "auto",
        [Bucket(2, 100)], [Bucket(1, 256), Bucket(4, 512)],
    )  # fmt: skip
    kinds = [(m.program, m.bucket.batch, m.bucket.seq) for m in planned]
    assert kinds == [("vision", 1, 256), ("vision", 4, 512), ("decoder", 2, 128)]
    assert planned[1].temp_bytes > planned[0].temp_bytes > 0
    assert all(m.total_bytes > m.argument_bytes > 0 for m in planned)


@pytest.mark.parametrize(
    "model_type, sections, interleaved",
    [("qwen2_vl", [16, 24, 24], False), ("qwen3_vl", [24, 20, 20], True)],
)
def test_mrope_tables_equal_transformers(model_type, sections, interleaved):
    """The multimodal rotary tables for 3-D positions: Qwen2-VL's contiguous sections and
    Qwen3-VL's interleaved ones, at the 2B models' head_dim (128)."""
    import dataclasses

    import transformers

    from jaxembed.models.decoder import mrope_cos_sin
    from jaxembed.models.qwen_vl import QwenVLConfig

    rope = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": sections}
    text = dict(hidden_size=256, num_attention_heads=2, num_key_value_heads=2, head_dim=128,
                vocab_size=100, intermediate_size=64, num_hidden_layers=1)  # fmt: skip
    if interleaved:
        rope["mrope_interleaved"] = True
        hf = transformers.Qwen3VLConfig(text_config={**text, "rope_parameters": rope})
        table = transformers.models.qwen3_vl.modeling_qwen3_vl.Qwen3VLTextRotaryEmbedding
    else:
        hf = transformers.Qwen2VLConfig(text_config={**text, "rope_parameters": rope})
        table = transformers.models.qwen2_vl.modeling_qwen2_vl.Qwen2VLRotaryEmbedding
    positions = np.random.default_rng(0).integers(0, 500, (3, 2, 7))
    cos, sin = table(hf.text_config)(torch.zeros(1), torch.tensor(positions))
    config = QwenVLConfig.from_hf({**hf.to_dict(), "model_type": model_type})
    assert config.text.mrope_interleaved == interleaved
    ours = mrope_cos_sin(positions, dataclasses.replace(config.text))
    np.testing.assert_allclose(np.asarray(ours[0]), cos.numpy(), atol=1e-5)
    np.testing.assert_allclose(np.asarray(ours[1]), sin.numpy(), atol=1e-5)


def test_request_limits_apply_to_vision_language_items(qwen3_vl):
    """max_request_tokens counts an item's vision tokens; a full queue refuses up front."""
    import asyncio

    from jaxembed.engine.request.jobs import EmbedJob, EmbedOptions
    from jaxembed.engine.request.limits import QueueLimits
    from jaxembed.engine.service.config import ServiceConfig
    from jaxembed.engine.service.rows import local_service
    from jaxembed.errors import OverloadedError, RequestTooLargeError

    _, _, embedder = qwen3_vl
    config = ServiceConfig(max_request_tokens=60, queue=QueueLimits(max_queued_requests=1))
    service = local_service(embedder, config)
    try:
        job = EmbedJob([EmbedItem(text="a cat", image=_image(300, 200, 1))], EmbedOptions())
        with pytest.raises(RequestTooLargeError, match="tokens"):
            asyncio.run(service.embed(job))
        service.backend.fused._pending.append(object())  # one request waiting: the queue is full
        with pytest.raises(OverloadedError):
            service.check_capacity()
    finally:
        service.backend.fused._pending.clear()
        assert service.close(timeout=10)


def test_placeholder_tokens_typed_into_the_text_are_refused(qwen3_vl):
    _, _, embedder = qwen3_vl
    with pytest.raises(InvalidInputError, match="reserves"):
        embedder.fused.embed([EmbedItem(text="a <|image_pad|> b", image=_image(60, 60, 0))])
    with pytest.raises(InvalidInputError, match="reserves"):
        embedder.fused.embed([EmbedItem(text="just <|video_pad|> text")])


def test_a_recipe_the_code_does_not_know_is_a_load_error():
    from jaxembed.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="unknown keys"):
        VLRecipe.from_card({**QWEN3_VL_EMBEDDING_TEMPLATE, "pooling_layer": -2})
    with pytest.raises(ModelLoadError, match="positions"):
        VLRecipe.from_card({**QWEN3_VL_EMBEDDING_TEMPLATE, "positions": "3d"})
