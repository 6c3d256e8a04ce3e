"""One attention function for every model family, with an implementation per backend.

Every tower (BERT-family encoders, Mistral/Qwen decoders, CLIP/SigLIP text and
vision) calls `attention(q, k, v, mask, config)`: q `[B, L, H, D]`, k and v
`[B, L, KH, D]` (grouped-query attention: KH divides H) and a mask *description*
rather than a materialised `[B, H, L, L]` bias, so that memory-efficient kernels
never have to build one:

- `segments` `[B, L]`: a query attends only to keys of its own segment, and
  segment 0 is padding (it neither sees nor is seen). Unpacked rows are the
  attention mask itself (1 = real); packed rows number their sequences 1, 2, ….
  `None`: every position is real (ViT patches).
- `causal`: keys at or before the query only.
- `window`: keys fewer than `window` positions away (behind the query when causal,
  either side when not) — a Python int (static), a traced per-layer scalar
  (decoders whose layers differ), or None.

Implementations (`IMPLEMENTATIONS`):
- `xla`: two einsums around the full float32 score tensor. The reference.
- `blocked`: memory-efficient attention in pure JAX (online softmax over key
  blocks, query blocks scanned, float32 accumulators): O(B·H·block²) live memory
  instead of O(B·H·L²), on any backend; key blocks that the mask rules out for a
  whole query block (other segments, padding, outside the causal triangle or the
  window) are never computed.
- `cudnn`: `jax.nn.dot_product_attention(implementation="cudnn")` (FlashAttention
  on NVIDIA GPUs, bfloat16/float16): padding as sequence lengths (rows are
  right-padded by the engine), causal, static sliding windows. Packed rows and
  per-layer windows it cannot express run `blocked`.
- `splash`: Pallas splash attention on TPU, with segment ids and causal/local
  masks, vmapped over batch and KV heads and `shard_map`-ped over the mesh when
  one is active. Per-layer (traced) windows run `blocked`.
- `pallas`: the Pallas GPU (Triton) FlashAttention kernel with segment ids
  (`jax.experimental.pallas.ops.gpu.attention.mha`): packed rows fused on NVIDIA
  GPUs, which cuDNN's padded layout cannot express; causal, no windows (those run
  `blocked`); `shard_map`-ped over the mesh like splash.
- `auto`: chosen per backend, length, dtype and mask form by `choose_implementation`
  (the table in docs/attention.md, derived from measurements).

Fully masked queries (padding) come out as zeros from `blocked`, `cudnn`, `splash`
and as a uniform average from `xla`; no real position ever depends on them.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import math
import os
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from jaxembed.parallel.sharding import active_mesh, mesh_spec

IMPLEMENTATIONS = ("xla", "blocked", "cudnn", "splash", "pallas")
CHOICES = ("auto", *IMPLEMENTATIONS)
# The process-wide default where no `--attention` is given (e.g. to run a test suite or a
# deployment on one implementation without changing every command line).
DEFAULT_ENV = "JAXEMBED_ATTENTION"
_NEG = float(jnp.finfo(jnp.float32).min)

# `auto` on the CPU: the einsum path up to this length (its [L, L] scores stay in
# cache and XLA fuses the softmax), blocked beyond. Measured: docs/benchmarks.md.
CPU_BLOCKED_FROM = 1024
# `auto` on a GPU without a cuDNN-expressible mask, and on a TPU below splash's blocks.
ACCELERATOR_BLOCKED_FROM = 1024
SPLASH_MIN_LENGTH = 128  # splash tiles are multiples of 128 lanes
PALLAS_GPU_BLOCK = 64  # rows are padded to a multiple (Triton tiles are powers of two)


@dataclasses.dataclass(frozen=True)
class AttentionConfig:
    """Which implementation to run, and its block sizes.

    `impl` is one of `CHOICES`. `block_q`/`block_k` are the blocked (and splash)
    tile sizes; lengths that are not a multiple are padded with masked positions.
    `interpret`: run Pallas kernels in interpret mode (splash on a CPU, for tests).
    """

    impl: str = dataclasses.field(default_factory=lambda: os.environ.get(DEFAULT_ENV) or "auto")
    block_q: int = 512
    block_k: int = 512
    interpret: bool = False

    def __post_init__(self) -> None:
        if self.impl not in CHOICES:
            raise ValueError(
                f"attention {self.impl!r} is not one of {CHOICES} (set by --attention or "
                f"${DEFAULT_ENV})"
            )
        if self.block_q < 1 or self.block_k < 1:
            raise ValueError("attention block sizes must be positive")


@dataclasses.dataclass(frozen=True)
class AttentionMask:
    """Who sees whom, without materialising it (see the module docstring)."""

    segments: jax.Array | None  # [B, L] int; 0 = padding; None = all real, one segment
    causal: bool = False
    window: int | jax.Array | None = None
    packed: bool = False  # several segments per row (cuDNN cannot express it)

    @property
    def static_window(self) -> bool:
        return self.window is None or isinstance(self.window, int | np.integer)


def backend_platform() -> str:
    """'cpu', 'gpu' (NVIDIA/CUDA), 'rocm' or 'tpu' for the default backend."""
    backend = jax.default_backend()
    if backend == "gpu":
        version = getattr(jax.devices()[0].client, "platform_version", "").lower()
        return "rocm" if "rocm" in version or "hip" in version else "gpu"
    return backend


def unavailable_reason(impl: str, platform: str | None = None) -> str | None:
    """Why `impl` cannot run on this backend (a start-up error), or None."""
    platform = platform or backend_platform()
    if impl == "cudnn" and platform != "gpu":
        return f"attention 'cudnn' needs an NVIDIA GPU (this backend is {platform})"
    if impl == "splash" and platform != "tpu":
        return f"attention 'splash' needs a TPU (this backend is {platform})"
    if impl == "pallas" and platform != "gpu":
        return f"attention 'pallas' needs an NVIDIA GPU (this backend is {platform})"
    return None


def cudnn_supports(dtype: jnp.dtype, head_dim: int) -> bool:
    return jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) and head_dim % 8 == 0 and head_dim <= 128


def pallas_gpu_supports(
    dtype: jnp.dtype, head_dim: int, mask: AttentionMask, interpret: bool = False
) -> bool:
    """The Triton kernel's reach: 16-bit inputs (its dots), head dims of 16-256 that are a
    multiple of 16, and masks of segments and causality only (no window). Interpreted (the
    CPU tests of its argument mapping), any dtype and head dim."""
    if mask.window is not None:
        return False
    return interpret or (
        jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)
        and 16 <= head_dim <= 256
        and head_dim % 16 == 0
    )


def choose_implementation(
    config: AttentionConfig,
    *,
    length: int,
    dtype: jnp.dtype,
    head_dim: int,
    mask: AttentionMask,
    platform: str | None = None,
) -> str:
    """The implementation that runs for this call (trace time: shapes and dtype are static).

    An explicit choice stands, except where its kernel cannot express the mask
    (cuDNN: packed rows, traced windows, float32; splash: traced windows): then
    `blocked`, which expresses everything.
    """
    platform = platform or backend_platform()
    impl = config.impl
    if impl == "auto":
        cudnn_can = cudnn_supports(dtype, head_dim) and not mask.packed and mask.static_window
        if platform == "gpu" and cudnn_can:
            return "cudnn"
        if platform == "gpu" and mask.packed and pallas_gpu_supports(dtype, head_dim, mask):
            return "pallas"
        if platform == "tpu" and length >= SPLASH_MIN_LENGTH and mask.static_window:
            return "splash"
        threshold = CPU_BLOCKED_FROM if platform == "cpu" else ACCELERATOR_BLOCKED_FROM
        return "blocked" if length >= threshold else "xla"
    if impl == "cudnn" and (
        mask.packed or not mask.static_window or not cudnn_supports(dtype, head_dim)
    ):
        return "blocked"
    if impl == "splash" and not mask.static_window:
        return "blocked"
    if impl == "pallas" and not pallas_gpu_supports(dtype, head_dim, mask, config.interpret):
        return "blocked"
    return impl


_CHOICES_SEEN: contextvars.ContextVar[set[str] | None] = contextvars.ContextVar(
    "jaxembed_attention_choices", default=None
)


@contextlib.contextmanager
def record_choices() -> Iterator[set[str]]:
    """Collect the implementations that calls traced inside this context chose."""
    seen: set[str] = set()
    token = _CHOICES_SEEN.set(seen)
    try:
        yield seen
    finally:
        _CHOICES_SEEN.reset(token)


def attention(
    q_blhd: jax.Array,
    k_blkd: jax.Array,
    v_blkd: jax.Array,
    mask: AttentionMask,
    config: AttentionConfig = AttentionConfig("auto"),
) -> jax.Array:
    """Scaled dot-product attention → `[B, L, H, D]` in q's dtype (softmax in float32)."""
    length, heads, head_dim = q_blhd.shape[1:]
    if heads % k_blkd.shape[2]:
        raise ValueError(f"{heads} query heads are not a multiple of {k_blkd.shape[2]} kv heads")
    impl = choose_implementation(
        config, length=length, dtype=q_blhd.dtype, head_dim=head_dim, mask=mask
    )
    seen = _CHOICES_SEEN.get()
    if seen is not None:
        seen.add(impl)
    if impl == "xla":
        return xla_attention(q_blhd, k_blkd, v_blkd, mask)
    if impl == "blocked":
        return blocked_attention(q_blhd, k_blkd, v_blkd, mask, config.block_q, config.block_k)
    if impl == "cudnn":
        return cudnn_attention(q_blhd, k_blkd, v_blkd, mask)
    if impl == "pallas":
        return pallas_gpu_attention(q_blhd, k_blkd, v_blkd, mask, config.interpret)
    return splash_attention(q_blhd, k_blkd, v_blkd, mask, config)


# -- masks --------------------------------------------------------------------------------------


def _allowed(
    q_pos: jax.Array, k_pos: jax.Array, q_seg: jax.Array | None, k_seg: jax.Array | None, mask
) -> jax.Array:
    """Bool [B or 1, Q, K]: which (query, key) pairs may attend, from positions and segments."""
    allowed = jnp.ones((1, q_pos.shape[0], k_pos.shape[0]), dtype=bool)
    if q_seg is not None:
        allowed = (q_seg[:, :, None] == k_seg[:, None, :]) & (k_seg[:, None, :] > 0)
    distance = q_pos[:, None] - k_pos[None, :]  # query - key
    if mask.causal:
        allowed = allowed & (distance >= 0)[None]
    if mask.window is not None:
        spread = distance if mask.causal else jnp.abs(distance)
        allowed = allowed & (spread < mask.window)[None]
    return allowed


def _grouped(q_blhd: jax.Array, kv_heads: int) -> jax.Array:
    """[B, L, H, D] → [B, L, KH, G, D]: the query heads that share each kv head."""
    b, length, heads, d = q_blhd.shape
    return q_blhd.reshape(b, length, kv_heads, heads // kv_heads, d)


# -- xla: the reference ---------------------------------------------------------------------


def xla_attention(q_blhd, k_blkd, v_blkd, mask: AttentionMask) -> jax.Array:
    b, length, heads, d = q_blhd.shape
    q = _grouped(q_blhd, k_blkd.shape[2])
    scores = jnp.einsum("bqkgd,bskd->bkgqs", q, k_blkd).astype(jnp.float32) / math.sqrt(d)
    positions = jnp.arange(length)
    segments = mask.segments
    allowed = _allowed(positions, positions, segments, segments, mask)  # [B|1, L, L]
    # Masked keys get the float32 minimum, so a padded key contributes exactly 0.
    scores = jnp.where(allowed[:, None, None], scores, _NEG)
    probs = jax.nn.softmax(scores, axis=-1).astype(v_blkd.dtype)
    ctx = jnp.einsum("bkgqs,bskd->bqkgd", probs, v_blkd)
    return ctx.reshape(b, length, heads, d)


# -- blocked: online softmax over key blocks ----------------------------------------------------


def _pad_to(x: jax.Array, length: int, axis: int = 1) -> jax.Array:
    if x.shape[axis] == length:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, length - x.shape[axis])
    return jnp.pad(x, widths)


def _segment_ranges(segments_bl: jax.Array, block: int) -> tuple[jax.Array, jax.Array]:
    """Per block of positions and row: the smallest and largest real segment id in it.

    [B, n_blocks] each; a block without real positions gets an empty range (lo > hi).
    """
    b, length = segments_bl.shape
    blocks = segments_bl.reshape(b, length // block, block)
    big = jnp.iinfo(jnp.int32).max
    lo = jnp.min(jnp.where(blocks > 0, blocks, big), axis=-1)
    hi = jnp.max(jnp.where(blocks > 0, blocks, 0), axis=-1)
    return lo, hi


def _key_block_ranges(mask: AttentionMask, segments_bl, n_q, n_k, bq, bk):
    """[n_q] first and one-past-last key block that any query of each query block needs.

    A key block is needed if, in some row, its segment-id range overlaps the query
    block's and it lies within the causal triangle / window. Segment ids are
    contiguous and increasing in the engine's rows, so the needed key blocks of a
    query block are one contiguous run; anything inside the run that the mask
    rules out is still masked element by element.
    """
    q_idx, k_idx = jnp.arange(n_q)[:, None], jnp.arange(n_k)[None, :]
    needed = jnp.ones((n_q, n_k), dtype=bool)
    if segments_bl is not None:
        q_lo, q_hi = _segment_ranges(segments_bl, bq)
        k_lo, k_hi = _segment_ranges(segments_bl, bk)
        overlap = (q_lo[:, :, None] <= k_hi[:, None, :]) & (k_lo[:, None, :] <= q_hi[:, :, None])
        needed = jnp.any(overlap, axis=0)
    q_first, q_last = q_idx * bq, q_idx * bq + bq - 1
    k_first, k_last = k_idx * bk, k_idx * bk + bk - 1
    if mask.causal:
        needed = needed & (k_first <= q_last)
    if mask.window is not None:
        needed = needed & (q_first - k_last < mask.window)  # some key behind within reach
        if not mask.causal:
            needed = needed & (k_first - q_last < mask.window)
    any_needed = jnp.any(needed, axis=1)
    first = jnp.where(any_needed, jnp.argmax(needed, axis=1), 0)
    last = jnp.where(any_needed, n_k - jnp.argmax(needed[:, ::-1], axis=1), 0)
    return first.astype(jnp.int32), last.astype(jnp.int32)


def blocked_attention(
    q_blhd, k_blkd, v_blkd, mask: AttentionMask, block_q: int = 512, block_k: int = 512
) -> jax.Array:
    """Memory-efficient attention: scan query blocks, online softmax over needed key blocks."""
    b, length, heads, d = q_blhd.shape
    kv_heads = k_blkd.shape[2]
    bq, bk = min(block_q, length), min(block_k, length)
    padded = -(-length // math.lcm(bq, bk)) * math.lcm(bq, bk)
    n_q, n_k = padded // bq, padded // bk
    segments = mask.segments
    if segments is None and padded != length:
        segments = jnp.ones((b, length), jnp.int32)
    if segments is not None:
        segments = _pad_to(segments.astype(jnp.int32), padded)
    q = _grouped(_pad_to(q_blhd, padded), kv_heads)  # [B, Lp, KH, G, D]
    k, v = _pad_to(k_blkd, padded), _pad_to(v_blkd, padded)
    first, last = _key_block_ranges(mask, segments, n_q, n_k, bq, bk)
    scale = 1.0 / math.sqrt(d)
    positions = jnp.arange(padded)

    def query_block(i):
        q_i = jax.lax.dynamic_slice_in_dim(q, i * bq, bq, axis=1)  # [B, bq, KH, G, D]
        q_pos = jax.lax.dynamic_slice_in_dim(positions, i * bq, bq)
        q_seg = None if segments is None else jax.lax.dynamic_slice_in_dim(segments, i * bq, bq, 1)
        acc_shape = (b, kv_heads, heads // kv_heads, bq)

        def key_block(j, carry):
            row_max, row_sum, acc = carry
            k_j = jax.lax.dynamic_slice_in_dim(k, j * bk, bk, axis=1)
            v_j = jax.lax.dynamic_slice_in_dim(v, j * bk, bk, axis=1)
            k_pos = jax.lax.dynamic_slice_in_dim(positions, j * bk, bk)
            k_seg = (
                None if segments is None else jax.lax.dynamic_slice_in_dim(segments, j * bk, bk, 1)
            )
            s = (
                jnp.einsum("bqkgd,bskd->bkgqs", q_i, k_j, preferred_element_type=jnp.float32)
                * scale
            )
            allowed = _allowed(q_pos, k_pos, q_seg, k_seg, mask)[:, None, None]
            s = jnp.where(allowed, s, _NEG)
            m_new = jnp.maximum(row_max, s.max(axis=-1))
            p = jnp.where(allowed, jnp.exp(s - m_new[..., None]), 0.0)
            correction = jnp.exp(row_max - m_new)
            l_new = row_sum * correction + p.sum(axis=-1)
            pv = jnp.einsum(
                "bkgqs,bskd->bkgqd", p.astype(v.dtype), v_j, preferred_element_type=jnp.float32
            )
            return m_new, l_new, acc * correction[..., None] + pv

        init = (
            jnp.full(acc_shape, _NEG, jnp.float32),
            jnp.zeros(acc_shape, jnp.float32),
            jnp.zeros((*acc_shape, d), jnp.float32),
        )
        _, row_sum, acc = jax.lax.fori_loop(first[i], last[i], key_block, init)
        out = acc / jnp.where(row_sum == 0, 1.0, row_sum)[..., None]  # fully masked queries → 0
        return out.astype(q_blhd.dtype)  # [B, KH, G, bq, D]

    blocks = jax.lax.map(query_block, jnp.arange(n_q))  # [n_q, B, KH, G, bq, D]
    out = blocks.transpose(1, 0, 4, 2, 3, 5).reshape(b, padded, heads, d)
    return out[:, :length]


# -- cuDNN (NVIDIA GPUs) --------------------------------------------------------------------


def cudnn_attention(
    q_blhd, k_blkd, v_blkd, mask: AttentionMask, implementation: str | None = "cudnn"
) -> jax.Array:
    """FlashAttention through cuDNN. `implementation="xla"` runs the same call on any
    backend (how the argument mapping is tested without a GPU)."""
    if mask.packed or not mask.static_window:
        raise ValueError("cuDNN attention takes neither packed rows nor per-layer windows")
    lengths = None
    if mask.segments is not None:  # right-padded rows: the real length of each
        lengths = jnp.sum(mask.segments > 0, axis=1).astype(jnp.int32)
    window = None
    if mask.window is not None:
        reach = int(mask.window) - 1
        window = (reach, 0) if mask.causal else (reach, reach)
    out = jax.nn.dot_product_attention(
        q_blhd,
        k_blkd,
        v_blkd,
        is_causal=mask.causal,
        query_seq_lengths=lengths,
        key_value_seq_lengths=lengths,
        local_window_size=window,
        implementation=implementation,
    )
    if lengths is None:
        return out
    real = jnp.arange(q_blhd.shape[1])[None, :] < lengths[:, None]
    return jnp.where(real[:, :, None, None], out, 0).astype(q_blhd.dtype)


# -- Pallas GPU (Triton) ----------------------------------------------------------------------


def _pallas_gpu_local(q_blhd, k_blkd, v_blkd, segments_bl, *, causal: bool, interpret: bool):
    from jax.experimental.pallas.ops.gpu.attention import BlockSizes, mha

    length, heads, d = q_blhd.shape[1:]
    groups = heads // k_blkd.shape[2]
    if groups > 1:  # grouped-query attention: each kv head serves `groups` query heads
        k_blkd = jnp.repeat(k_blkd, groups, axis=2)
        v_blkd = jnp.repeat(v_blkd, groups, axis=2)
    padded = -(-length // PALLAS_GPU_BLOCK) * PALLAS_GPU_BLOCK
    q, k, v = (_pad_to(x, padded) for x in (q_blhd, k_blkd, v_blkd))
    segments = _pad_to(segments_bl.astype(jnp.int32), padded)  # padding: segment 0
    block = min(128, padded) if padded % 128 == 0 else PALLAS_GPU_BLOCK
    sizes = BlockSizes(block, block, 32, 32, 32, 32)
    out = mha(
        q,
        k,
        v,
        segments,
        sm_scale=1.0 / math.sqrt(d),
        causal=causal,
        block_sizes=sizes,
        interpret=interpret,
    )
    # Padding queries (segment 0) attended to padding only: zero them, as the others do.
    real = (segments > 0)[:, :length, None, None]
    return jnp.where(real, out[:, :length], 0).astype(q_blhd.dtype)


def pallas_gpu_attention(
    q_blhd, k_blkd, v_blkd, mask: AttentionMask, interpret: bool = False
) -> jax.Array:
    """Packed (or padded) rows through the Pallas GPU FlashAttention kernel; under an active
    mesh, rows over `data` (kv heads stay whole: each shard repeats its own)."""
    if mask.window is not None:
        raise ValueError("the Pallas GPU kernel takes no sliding window")
    segments = mask.segments
    if segments is None:
        segments = jnp.ones(q_blhd.shape[:2], jnp.int32)
    run = functools.partial(_pallas_gpu_local, causal=mask.causal, interpret=interpret)
    active = active_mesh()
    if active is None:
        return run(q_blhd, k_blkd, v_blkd, segments)
    mesh, rules = active
    rows = mesh_spec(("batch", "length", "heads", "head_dim"), q_blhd.shape, mesh, rules)[0]
    spec = PartitionSpec(rows, None, None, None)
    return jax.shard_map(
        run,
        mesh=mesh,
        in_specs=(spec, spec, spec, PartitionSpec(rows, None)),
        out_specs=spec,
        check_vma=False,
    )(q_blhd, k_blkd, v_blkd, segments)


# -- splash (TPU Pallas) ----------------------------------------------------------------------


def _splash_kernel(
    length: int, groups: int, causal: bool, window: int | None, block: int, interpret: bool
):
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_kernel as kernel_lib,
    )
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_mask as mask_lib,
    )

    shape = (length, length)
    if window is not None:
        reach = window - 1
        one = mask_lib.LocalMask(shape, (reach, 0 if causal else reach), offset=0)
    elif causal:
        one = mask_lib.CausalMask(shape)
    else:
        one = mask_lib.FullMask(shape)
    # Forward tiles only: embeddings never run the backward pass.
    sizes = kernel_lib.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block)
    # Built per trace, at trace time: the kernel holds its mask tables as arrays, which
    # must belong to the trace that uses them (a kernel cached across traces leaks tracers).
    with jax.ensure_compile_time_eval():
        kernel = kernel_lib.make_splash_mqa(
            mask_lib.MultiHeadMask([one] * groups),
            head_shards=1,
            q_seq_shards=1,
            block_sizes=sizes,
            interpret=interpret,
        )
    return kernel, kernel_lib.SegmentIds


def _splash_local(q_blhd, k_blkd, v_blkd, segments_bl, mask: AttentionMask, config):
    """Splash on this device's rows and heads: vmapped over batch and kv heads (MQA kernels)."""
    b, length, heads, d = q_blhd.shape
    kv_heads = k_blkd.shape[2]
    lanes = SPLASH_MIN_LENGTH  # splash tiles are whole multiples of 128 lanes
    block = min(-(-config.block_q // lanes) * lanes, -(-length // lanes) * lanes)
    padded = -(-length // block) * block
    window = None if mask.window is None else int(mask.window)
    kernel, segment_ids = _splash_kernel(
        padded, heads // kv_heads, mask.causal, window, block, config.interpret
    )
    q = _grouped(_pad_to(q_blhd, padded), kv_heads) / math.sqrt(d)  # splash does not scale
    q = q.transpose(0, 2, 3, 1, 4)  # [B, KH, G, Lp, D]
    k = _pad_to(k_blkd, padded).transpose(0, 2, 1, 3)  # [B, KH, Lp, D]
    v = _pad_to(v_blkd, padded).transpose(0, 2, 1, 3)
    if segments_bl is None:
        segments_bl = jnp.ones((b, length), jnp.int32)
    segments = _pad_to(segments_bl.astype(jnp.int32), padded)

    def one_row(q_kgld, k_kld, v_kld, seg_l):
        ids = segment_ids(q=seg_l, kv=seg_l)
        return jax.vmap(lambda q_gld, k_ld, v_ld: kernel(q_gld, k_ld, v_ld, segment_ids=ids))(
            q_kgld, k_kld, v_kld
        )

    out = jax.vmap(one_row)(q, k, v, segments)  # [B, KH, G, Lp, D]
    out = out.transpose(0, 3, 1, 2, 4).reshape(b, padded, heads, d)[:, :length]
    # Padding shares segment id 0 in the kernel; zero it as the other implementations do.
    real = (segments[:, :length] > 0)[:, :, None, None]
    return jnp.where(real, out, 0).astype(q_blhd.dtype)


def splash_attention(q_blhd, k_blkd, v_blkd, mask: AttentionMask, config: AttentionConfig):
    """Splash attention; under an active mesh, rows over `data` and heads over `model`."""
    if not mask.static_window:
        raise ValueError("splash attention needs a static window")
    run = functools.partial(_splash_local, mask=mask, config=config)
    active = active_mesh()
    if active is None:
        return run(q_blhd, k_blkd, v_blkd, mask.segments)
    mesh, rules = active
    q_spec = mesh_spec(("batch", "length", "heads", "head_dim"), q_blhd.shape, mesh, rules)
    kv_spec = mesh_spec(("batch", "length", "kv_heads", "head_dim"), k_blkd.shape, mesh, rules)
    if q_spec[2] != kv_spec[2]:  # kv heads not split like q heads: keep all heads whole
        q_spec = PartitionSpec(q_spec[0], None, None, None)
        kv_spec = PartitionSpec(kv_spec[0], None, None, None)
    seg_spec = PartitionSpec(q_spec[0], None)
    segments = mask.segments
    if segments is None:
        segments = jnp.ones(q_blhd.shape[:2], jnp.int32)
    return jax.shard_map(
        run,
        mesh=mesh,
        in_specs=(q_spec, kv_spec, kv_spec, seg_spec),
        out_specs=q_spec,
        check_vma=False,
    )(q_blhd, k_blkd, v_blkd, segments)
