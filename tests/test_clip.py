"""Tiny random CLIP and SigLIP built with transformers: text and image features, preprocessing,
videos, conversion."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from jaxembed.api import Embedder
from jaxembed.errors import InvalidInputError
from jaxembed.images import ImagePreprocessor
from jaxembed.media import MediaLimits, decode_video, sample_frame_indices
from jaxembed.vectors import fuse_modalities
from tests.helpers import (
    CLIP_IMAGE_SIZE,
    SIGLIP_MAX_LENGTH,
    generated_image,
    generated_video,
    save_tiny_clip,
    save_tiny_siglip,
)

TEXTS = ["a photo of the cat", "the dog", "x", "Two cats, ONE dog &   a caption!"]


@pytest.fixture(scope="module", params=["clip", "siglip"])
def clip(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(f"tiny-{request.param}")
    save = save_tiny_clip if request.param == "clip" else save_tiny_siglip
    model, tokenizer, processor = save(directory, seed=3)
    embedder = Embedder.from_pretrained(directory, compile_cache_dir=False)
    return directory, model, tokenizer, processor, embedder


def _reference_text_features(model, tokenizer, texts: list[str]) -> np.ndarray:
    """HF's features, fed as each model is meant to be used: CLIP with padding and a mask,
    SigLIP with every text padded to max_length and no mask (its processor's way)."""
    if model.config.model_type == "siglip":
        pad = model.config.text_config.pad_token_id
        ids = [tokenizer(t).input_ids for t in texts]
        ids = [x + [pad] * (SIGLIP_MAX_LENGTH - len(x)) for x in ids]
        batch = {"input_ids": torch.tensor(ids, dtype=torch.long)}
    else:
        batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model.get_text_features(**batch).pooler_output.numpy()


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def _normalized(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_card_derived_from_checkpoint(clip):
    _, model, _, _, embedder = clip
    card = embedder.card
    assert card.family == model.config.model_type
    assert card.modalities == ("text", "image", "video")
    assert card.pooling == "last_token" and card.normalize
    assert card.dimensions == 24
    siglip = card.family == "siglip"
    assert card.max_length == (SIGLIP_MAX_LENGTH if siglip else 77)
    assert card.pad_to_max_length == siglip


def test_text_features_match_transformers(clip):
    _, model, tokenizer, _, embedder = clip
    ref = _reference_text_features(model, tokenizer, TEXTS)
    ours = embedder.embed(TEXTS)
    # Our tokenisation is HF's tokenizer's (same tokenizer.json), padded only for SigLIP.
    for text, ids in zip(TEXTS, embedder.tokenize(TEXTS), strict=True):
        expected = tokenizer(text).input_ids
        if embedder.card.pad_to_max_length:
            assert len(ids) == SIGLIP_MAX_LENGTH
            ids = ids[: len(expected)]
        assert ids.tolist() == expected
    cos = _cos(ours, ref)
    assert cos.min() >= 0.99999, cos
    np.testing.assert_allclose(ours, _normalized(ref), atol=2e-6)


@pytest.mark.parametrize("size", [(32, 32), (57, 40), (30, 64), (200, 90), (17, 23)])
@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P"])
def test_preprocessing_equals_hf_image_processor(clip, size, mode):
    directory, _, _, processor, _ = clip
    image = generated_image(size, mode)
    ours = clip[4].images.preprocess(image)
    assert ImagePreprocessor.for_model(directory, CLIP_IMAGE_SIZE) == clip[4].images.preprocess
    ref = processor(images=image, return_tensors="np")["pixel_values"][0]
    assert ours.shape == ref.shape == (3, CLIP_IMAGE_SIZE, CLIP_IMAGE_SIZE)
    np.testing.assert_array_equal(ours, ref)


def test_image_features_match_transformers(clip):
    _, model, _, processor, embedder = clip
    images = [
        generated_image(size, mode)
        for size, mode in [((57, 40), "RGB"), ((30, 64), "RGBA"), ((20, 20), "L"), ((90, 33), "P")]
    ]
    images += [generated_image((40 + i, 50), "RGB", seed=i) for i in range(19)]  # > one batch
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        ref = model.get_image_features(pixel_values=pixels).pooler_output.numpy()
    ours = embedder.embed_images(images)
    cos = _cos(ours, ref)
    assert cos.min() >= 0.99999, cos
    np.testing.assert_allclose(ours, _normalized(ref), atol=2e-6)


def test_image_dimensions_and_batch_invariance(clip):
    embedder = clip[4]
    images = [generated_image((40, 50), "RGB", seed=i) for i in range(5)]
    together = embedder.embed_images(images)
    alone = np.concatenate([embedder.embed_images([im]) for im in images])
    np.testing.assert_allclose(together, alone, atol=1e-6)
    short = embedder.embed_images(images, dimensions=8)
    np.testing.assert_allclose(short, _normalized(together[:, :8]), atol=1e-6)


def test_video_is_mean_of_sampled_frames(clip):
    embedder = clip[4]
    data = generated_video(frames=23)
    decoded = decode_video(data, 5, MediaLimits())
    assert len(decoded) == 5
    # Independently: every frame decoded with PyAV, the documented indices picked.
    import av

    with av.open(io.BytesIO(data)) as container:
        all_frames = [f.to_image() for f in container.decode(video=0)]
    indices = sample_frame_indices(len(all_frames), 5)
    assert indices == [0, 6, 11, 16, 22]
    frames = [all_frames[i] for i in indices]
    for ours, ref in zip(decoded, frames, strict=True):
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(ref))
    expected = _normalized(embedder.embed_images(frames).mean(axis=0))
    video = embedder.embed_video(decoded)
    assert _cos(video, expected) >= 0.99999
    np.testing.assert_allclose(video, expected, atol=1e-6)


def test_sample_frame_indices():
    assert sample_frame_indices(3, 8) == [0, 1, 2]
    assert sample_frame_indices(100, 1) == [0]
    assert sample_frame_indices(100, 2) == [0, 99]
    assert sample_frame_indices(9, 3) == [0, 4, 8]


def test_fusion_is_normalised_weighted_sum():
    text, image = np.array([3.0, 0.0], np.float32), np.array([0.0, 0.5], np.float32)
    np.testing.assert_allclose(fuse_modalities([(text, 1.0), (image, 1.0)]), [0.70710677] * 2)
    fused = fuse_modalities([(text, 3.0), (image, 1.0)])
    np.testing.assert_allclose(fused, _normalized(np.array([3.0, 1.0])), rtol=1e-6)


def test_text_model_refuses_images(embedder):
    with pytest.raises(InvalidInputError, match="only embeds text"):
        embedder.embed_images([Image.new("RGB", (8, 8))])


def test_converted_clip_restores_identically(clip, tmp_path):
    from jaxembed.weights.convert import convert

    directory, *_, embedder = clip
    convert(directory, tmp_path / "converted")
    restored = Embedder.from_pretrained(tmp_path / "converted", compile_cache_dir=False)
    assert restored.model.source_format == "orbax"
    image = [generated_image((40, 50), "RGB")]
    np.testing.assert_array_equal(restored.embed_images(image), embedder.embed_images(image))
    np.testing.assert_array_equal(restored.embed(TEXTS), embedder.embed(TEXTS))
