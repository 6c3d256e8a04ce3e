"""Every attention implementation equals the `xla` reference, alone and inside every model family."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxembed.api import Embedder
from jaxembed.errors import ModelLoadError
from jaxembed.models.attention import (
    AttentionConfig,
    AttentionMask,
    attention,
    blocked_attention,
    choose_implementation,
    cudnn_attention,
    pallas_gpu_attention,
    record_choices,
    xla_attention,
)
from tests.helpers import save_tiny_clip, save_tiny_decoder, save_tiny_model, save_tiny_siglip

BOUND = 2e-6  # max abs difference from `xla`, float32

# Small tiles so that tiny inputs still span many blocks (skips, partial blocks, padding).
BLOCKED = AttentionConfig("blocked", block_q=16, block_k=8)
SPLASH = AttentionConfig("splash", interpret=True)  # Pallas TPU kernel, interpreted on the CPU
PALLAS = AttentionConfig("pallas", interpret=True)  # Pallas GPU (Triton) kernel, interpreted


def _qkv(b=3, length=300, heads=4, kv_heads=2, d=16, seed=0):
    rng = np.random.default_rng(seed)
    q = jnp.asarray(rng.standard_normal((b, length, heads, d)), jnp.float32)
    k, v = (jnp.asarray(rng.standard_normal((b, length, kv_heads, d)), jnp.float32) for _ in "kv")
    return q, k, v


def _segments(length=300, packed=False):
    """Row 0 full, row 1 right-padded, row 2 four packed sequences then padding."""
    seg = np.zeros((3, length), np.int32)
    seg[0] = 1
    seg[1, :37] = 1
    for i, (start, end) in enumerate([(0, 20), (20, 55), (55, 90), (90, 280)]):
        seg[2, start:end] = i + 1 if packed else 1
    return seg


def _max_diff(out, ref, segments):
    real = segments > 0  # fully masked (padding) queries are not compared
    return float(np.abs(np.asarray(out) - np.asarray(ref))[real].max())


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
@pytest.mark.parametrize("window", [None, 7, 150], ids=["nowindow", "window7", "window150"])
def test_implementations_match_xla(packed, causal, window):
    q, k, v = _qkv()
    segments = _segments(packed=packed)
    mask = AttentionMask(jnp.asarray(segments), causal=causal, window=window, packed=packed)
    reference = xla_attention(q, k, v, mask)
    for block_q, block_k in [(16, 8), (64, 64), (512, 512)]:
        out = blocked_attention(q, k, v, mask, block_q, block_k)
        assert _max_diff(out, reference, segments) <= BOUND, (block_q, block_k)
    assert _max_diff(attention(q, k, v, mask, SPLASH), reference, segments) <= BOUND
    if window is None:  # the Triton kernel's masks: segments and causality
        out = pallas_gpu_attention(q, k, v, mask, interpret=True)
        assert _max_diff(out, reference, segments) <= BOUND
    if not packed:  # the exact call the cuDNN path makes, run by XLA on the CPU
        out = cudnn_attention(q, k, v, mask, implementation="xla")
        assert _max_diff(out, reference, segments) <= BOUND


def test_traced_per_layer_window_matches_static():
    """Decoders whose layers have different windows pass a traced scalar."""
    q, k, v = _qkv(length=96)
    segments = jnp.asarray(_segments(96, packed=True))

    @jax.jit
    def run(window):
        mask = AttentionMask(segments, causal=True, window=window, packed=True)
        return blocked_attention(q, k, v, mask, 16, 16), attention(q, k, v, mask, SPLASH)

    reference = xla_attention(q, k, v, AttentionMask(segments, causal=True, window=9, packed=True))
    blocked, splash_fallback = run(jnp.int32(9))
    assert _max_diff(blocked, reference, np.asarray(segments)) <= BOUND
    assert _max_diff(splash_fallback, reference, np.asarray(segments)) <= BOUND


def test_blocked_skips_blocks_and_keeps_memory_linear():
    """A causal 1x4096 call: blocked compiles to a fraction of xla's temporaries."""
    q = jax.ShapeDtypeStruct((1, 4096, 4, 64), jnp.float32)
    mask = AttentionMask(None, causal=True)

    def temp(fn):
        compiled = jax.jit(fn).lower(q, q, q).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    xla = temp(lambda q, k, v: xla_attention(q, k, v, mask))
    blocked = temp(lambda q, k, v: blocked_attention(q, k, v, mask, 512, 512))
    assert blocked * 10 <= xla


def test_fully_masked_rows_are_zero_not_nan():
    q, k, v = _qkv(length=32)
    segments = jnp.zeros((3, 32), jnp.int32)
    out = blocked_attention(q, k, v, AttentionMask(segments), 16, 16)
    assert np.isfinite(np.asarray(out)).all() and not np.asarray(out).any()


@pytest.mark.parametrize(
    "impl, platform, length, dtype, packed, expected",
    [
        ("auto", "cpu", 256, jnp.float32, False, "xla"),
        ("auto", "cpu", 4096, jnp.float32, True, "blocked"),
        ("auto", "gpu", 256, jnp.bfloat16, False, "cudnn"),
        ("auto", "gpu", 8192, jnp.bfloat16, True, "pallas"),  # cuDNN cannot take segments
        ("auto", "gpu", 256, jnp.bfloat16, True, "pallas"),  # packed rows: the Triton kernel
        ("auto", "gpu", 256, jnp.float32, True, "xla"),  # ... which wants 16-bit inputs
        ("pallas", "gpu", 256, jnp.bfloat16, False, "pallas"),
        ("auto", "gpu", 8192, jnp.float32, False, "blocked"),  # cuDNN wants 16-bit inputs
        ("auto", "tpu", 512, jnp.bfloat16, True, "splash"),
        ("auto", "tpu", 64, jnp.bfloat16, False, "xla"),
        ("cudnn", "gpu", 512, jnp.bfloat16, True, "blocked"),
        ("xla", "gpu", 8192, jnp.bfloat16, False, "xla"),
    ],
)
def test_auto_table(impl, platform, length, dtype, packed, expected):
    mask = AttentionMask(None, packed=packed)
    chosen = choose_implementation(
        AttentionConfig(impl),
        length=length,
        dtype=dtype,
        head_dim=64,
        mask=mask,
        platform=platform,
    )
    assert chosen == expected


# -- inside the models, through the engine ---------------------------------------------------


def _token_lists(seed=0, count=24, high=60):
    rng = np.random.default_rng(seed)
    return [rng.integers(5, 30000, n).astype(np.int32) for n in rng.integers(2, high, count)]


def _embedders(path, packing, configs):
    return {
        name: Embedder.from_pretrained(
            path, dtype="float32", packing=packing, attention=config, compile_cache_dir=False
        )
        for name, config in configs.items()
    }


@pytest.mark.parametrize("packing", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("family", ["bert", "roberta", "mistral", "qwen3"])
def test_text_models_match_xla(tmp_path, family, packing):
    """Mistral's sliding window (8) is shorter than most inputs; Qwen3 has one KV head (GQA)."""
    if family in ("bert", "roberta"):
        save_tiny_model(family, tmp_path, seed=3, pooling="mean")
    else:
        save_tiny_decoder(family, tmp_path, seed=3)
    configs = {
        "xla": AttentionConfig("xla"),
        "blocked": BLOCKED,
        "splash": SPLASH,
        "pallas": PALLAS,
    }
    embedders = _embedders(tmp_path, packing, configs)
    token_lists = _token_lists()
    reference = embedders["xla"].embed_token_lists(token_lists)
    for name in ("blocked", "splash", "pallas"):
        ours = embedders[name].embed_token_lists(token_lists)
        assert np.abs(ours - reference).max() <= BOUND, name
    with record_choices() as chosen:  # what really ran: the blocked kernel, not a fallback
        jax.jit(
            lambda p, i, m: embedders["blocked"].model.module().apply({"params": p}, i, m)
        ).lower(embedders["blocked"].model.params, *([jnp.ones((1, 48), jnp.int32)] * 2))
    assert chosen == {"blocked"}


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_clip_towers_match_xla(tmp_path, kind):
    from tests.helpers import generated_image

    (save_tiny_clip if kind == "clip" else save_tiny_siglip)(tmp_path)
    configs = {"xla": AttentionConfig("xla"), "blocked": BLOCKED, "splash": SPLASH}
    embedders = _embedders(tmp_path, False, configs)
    captions = ["a photo of the cat", "the dog", "x y z", "cat"]
    images = [generated_image((30 + 7 * i, 40), "RGB", seed=i) for i in range(3)]
    text_ref = embedders["xla"].embed(captions)
    image_ref = embedders["xla"].embed_images(images)
    for name in ("blocked", "splash"):
        assert np.abs(embedders[name].embed(captions) - text_ref).max() <= BOUND, name
        assert np.abs(embedders[name].embed_images(images) - image_ref).max() <= BOUND, name


def test_packed_decoder_rows_run_the_pallas_kernel(tmp_path):
    """Qwen3 (GQA 4:1, causal) packed rows: the Triton kernel is what is traced, not a fallback,
    and equals xla through the whole model."""
    save_tiny_decoder("qwen3", tmp_path, seed=5)
    embedders = _embedders(tmp_path, True, {"xla": AttentionConfig("xla"), "pallas": PALLAS})
    ours = embedders["pallas"].embed_token_lists(_token_lists(seed=2))
    assert set(embedders["pallas"].runner.attention_used.values()) == {"pallas"}
    reference = embedders["xla"].embed_token_lists(_token_lists(seed=2))
    assert np.abs(ours - reference).max() <= BOUND


def test_unavailable_implementation_is_a_clear_error():
    with pytest.raises(ModelLoadError, match="needs an NVIDIA GPU"):
        Embedder.from_pretrained(attention="cudnn", compile_cache_dir=False)
    with pytest.raises(ModelLoadError, match="needs a TPU"):
        Embedder.from_pretrained(attention="splash", compile_cache_dir=False)
    with pytest.raises(ModelLoadError, match="needs an NVIDIA GPU"):
        Embedder.from_pretrained(attention="pallas", compile_cache_dir=False)
    with pytest.raises(ValueError, match="not one of"):
        AttentionConfig("flash")
