"""`jaxembed plan` for vision-language embedders: the memory of the programs their items run on.

A GME / Qwen3-VL item runs two programs (engine/qwen_vl.py): the vision tower over
`rows x patches` (one image or one temporal patch of a video per row) and the decoder over
`batch x tokens` with the tower's flattened output gathered in. Both are compiled here from
abstract parameters on the requested mesh, as `plan_buckets` does for text programs. The
decoder's vision input is sized for every token of the bucket being visual (the most a batch
of that shape can carry), deep-stack features included.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxembed.engine.batching.buckets import Bucket
from jaxembed.engine.device.memory import BucketMemory, from_compiled
from jaxembed.engine.device.plan_buckets import abstract_model
from jaxembed.engine.workloads.qwen_vl import PATCH_STEP, TOKEN_STEP, fused_forward
from jaxembed.engine.workloads.vl_recipe import VLRecipe
from jaxembed.models.attention import record_choices
from jaxembed.models.qwen_vl import QwenVLModel
from jaxembed.parallel.sharding import activation_sharding

# Decoder buckets shown by default: one long item, and a batch of typical image items.
DEFAULT_DECODER_BUCKETS = (Bucket(1, 8192), Bucket(8, 1024))


def _round_up(n: int, step: int) -> int:
    return -(-n // step) * step


def default_vision_buckets(card: Any, config: Any) -> list[Bucket]:
    """The largest image one row can hold under the card's recipe, a video frame pair at the
    recipe's frame bound, and a batch of small images."""
    recipe = VLRecipe.from_card(card.vl_template)
    patch = config.vision.patch_size**2
    largest = recipe.fetch_max_pixels
    if recipe.processor_resize:
        largest = min(largest, recipe.processor_max_pixels)
    sizes = [Bucket(1, _round_up(largest // patch, PATCH_STEP))]
    if recipe.video:
        sizes.append(Bucket(1, _round_up(recipe.video_max_pixels // patch, PATCH_STEP)))
    return [*sizes, Bucket(8, 1024)]


def plan_vl_memory(
    family: Any,
    config: Any,
    card: Any,
    dtype: str,
    mesh_shape: Any,
    attention: str,
    buckets: Sequence[Bucket] | None = None,
    vision_buckets: Sequence[Bucket] | None = None,
) -> list[BucketMemory]:
    """Compile the vision and decoder programs per bucket; bytes per device."""
    mesh, params, module = abstract_model(family, config, dtype, mesh_shape, attention)
    out = []
    for bucket in vision_buckets or default_vision_buckets(card, config):
        out.append(_compile(mesh, params, *_vision_program(module, config, bucket), "vision"))
    for bucket in buckets or DEFAULT_DECODER_BUCKETS:
        seq = _round_up(bucket.seq, TOKEN_STEP)
        bucket = Bucket(bucket.batch, seq)
        out.append(_compile(mesh, params, *_decoder_program(module, config, bucket), "decoder"))
    return out


def _vision_program(module, config, bucket: Bucket):
    rows, n = bucket.batch, bucket.seq
    spec = jax.ShapeDtypeStruct
    args = [
        spec((rows, n, config.vision.patch_features), jnp.float32),
        spec((rows, n, 2), jnp.int32),
        spec((rows, n), jnp.int32),
    ]
    if config.vision.position_side:
        args.append((spec((rows, n, 4), jnp.int32), spec((rows, n, 4), jnp.float32)))
    else:
        args.append(None)

    def program(params, *inputs):
        return module.apply({"params": params}, *inputs, method=QwenVLModel.encode_vision)

    return program, bucket, args


def _decoder_program(module, config, bucket: Bucket):
    batch, seq = bucket.batch, bucket.seq
    width, spec = config.text.hidden_size, jax.ShapeDtypeStruct
    visual = batch * seq
    depth = len(config.vision.deepstack)
    args = [
        spec((batch, seq), jnp.int32),
        spec((batch, seq), jnp.int32),
        spec((visual, width), jnp.float32),
        spec((batch, seq), jnp.int32),
        spec((3, batch, seq), jnp.int32),
        spec((depth, visual, width), jnp.float32) if depth else None,
    ]
    forward = functools.partial(fused_forward, module)

    def program(params, *inputs):
        return forward({"params": params}, *inputs)

    return program, bucket, args


def _compile(mesh, params, program, bucket: Bucket, args, kind: str) -> BucketMemory:
    print(f"compiling {kind} bucket {bucket.batch}x{bucket.seq} ...", file=sys.stderr, flush=True)
    with activation_sharding(mesh), record_choices() as chosen:
        compiled = jax.jit(program).lower(params, *args).compile()
    used = "+".join(sorted(chosen)) or "none"
    return from_compiled(compiled, bucket, used, program=kind)
