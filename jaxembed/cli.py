"""`jaxembed` command line: convert, embed, models, plan — and subcommands contributed by plugins.

`serve` comes from the `server` package through the `jaxembed.commands`
entry-point group, so the library itself never imports the HTTP layer.
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib.metadata import entry_points
from pathlib import Path

from jaxembed.errors import InvalidInputError, JaxEmbedError


def mesh_shape_arg(text: str):
    """argparse type for `--mesh`: a usage error (exit 2) names the problem."""
    from jaxembed.parallel.mesh import MeshShape

    try:
        return MeshShape.parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _buckets_arg(text: str):
    from jaxembed.engine.device.memory import parse_buckets

    try:
        return parse_buckets(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_attention_option(parser: argparse.ArgumentParser) -> None:
    """`--attention`, shared by serve, embed, plan and the benchmarks."""
    from jaxembed.models.attention import CHOICES

    parser.add_argument(
        "--attention",
        choices=CHOICES,
        default=None,
        help="attention implementation: auto (per backend and bucket, docs/attention.md), "
        "xla (materialised scores), blocked (memory-efficient, any backend), "
        "cudnn (NVIDIA GPUs), splash (TPUs); default: $JAXEMBED_ATTENTION, else auto",
    )


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=None,
        help="model directory (HF or converted) or card name; default: the embedded all-MiniLM-L6-v2",
    )
    parser.add_argument(
        "--dtype", choices=["float32", "bfloat16"], default=None, help="default: the card's"
    )
    parser.add_argument("--compile-cache", default=None, help="XLA compile cache directory")


def _cmd_convert(args: argparse.Namespace) -> int:
    from jaxembed.weights.convert import convert

    result = convert(args.src, args.out, card_name=args.card, dtype=args.dtype)
    print(
        f"converted {result.card_name} → {result.out_dir} "
        f"({result.param_bytes / 2**20:.1f} MiB of parameters, {result.seconds:.1f} s)"
    )
    return 0


def _cmd_embed(args: argparse.Namespace) -> int:
    from jaxembed.api import Embedder
    from jaxembed.errors import MediaError
    from jaxembed.media import MediaLimits, decode_image, decode_video
    from jaxembed.routes import route_of

    if not (args.texts or args.image or args.video):
        raise InvalidInputError("give at least one TEXT, --image or --video")
    embedder = Embedder.from_pretrained(
        args.model,
        route=route_of(args.model, args.prompt),
        dtype=args.dtype,
        compile_cache_dir=args.compile_cache,
        attention=args.attention,
        max_embed_len=args.max_embed_len,
    )

    def emit(kind: str, source: str, vector) -> None:
        print(json.dumps({kind: source, "embedding": [round(float(x), 7) for x in vector]}))

    def read(path: str) -> bytes:
        try:
            return Path(path).read_bytes()
        except OSError as e:
            raise MediaError(f"{path}: {e.strerror}") from None

    if args.texts:
        vectors = embedder.embed(
            args.texts,
            truncate=args.truncate,
            dimensions=args.dimensions,
            prompt_name=args.prompt,
            chunking=args.chunking,
        )
        for text, vector in zip(args.texts, vectors, strict=True):
            emit("text", text, vector)
    limits = MediaLimits()
    if args.image:
        images = [decode_image(read(path), limits) for path in args.image]
        for path, vector in zip(
            args.image, embedder.embed_images(images, dimensions=args.dimensions), strict=True
        ):
            emit("image", path, vector)
    for path in args.video:
        if embedder.fused is not None:  # sampled as the model's recipe says (its fps, timestamps)
            vector = embedder.embed_video(
                read(path), dimensions=args.dimensions, frames=args.video_frames
            )
        else:
            frames = args.video_frames or embedder.card.video_frames
            decoded = decode_video(read(path), frames, limits)
            vector = embedder.embed_video(decoded, dimensions=args.dimensions)
        emit("video", path, vector)
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from jaxembed.errors import ModelLoadError
    from jaxembed.registry import registry_cards, resolve_model

    rows = [("card", "family", "pooling", "dims", "weights")]
    for name, card in registry_cards().items():
        try:
            where = str(resolve_model(name)[0])
        except ModelLoadError:
            where = "(not installed or converted)"
        rows.append((name, card.family, card.pooling, str(card.dimensions), where))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]  # columns fit every row
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)), row[4])
    return 0


def _plan_target(spec: str) -> tuple[dict, object]:
    """(HF config, card or None) of a config.json file, a model directory or a shipped card.

    A shipped card carries its architecture, so no weights are needed to plan it.
    """
    from jaxembed.registry import find_card, read_hf_config, resolve_model

    target = Path(spec)
    if target.is_file():  # a bare config.json: plan a model without downloading its weights
        return read_hf_config(target), None
    card = None if target.is_dir() else find_card(spec)
    if card is not None and card.architecture:
        return dict(card.architecture), card
    model_dir, card = resolve_model(spec)
    return read_hf_config(model_dir), card


def _force_host_devices(count: int) -> None:
    """On a CPU-only machine, let XLA present `count` devices so a mesh can be planned
    (must run before JAX starts its backend)."""
    import os

    flags = os.environ.get("XLA_FLAGS", "")
    if count > 1 and "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}".strip()


def _cmd_plan(args: argparse.Namespace) -> int:
    from jaxembed.families import model_family
    from jaxembed.models.attention import AttentionConfig
    from jaxembed.parallel.plan import plan_parameters

    if not args.no_buckets:
        _force_host_devices((args.mesh.data or 1) * args.mesh.model)
    hf_config, card = _plan_target(args.model)
    dtype = args.dtype or (card.dtype if card is not None else "bfloat16")
    family, config = model_family(hf_config, card)
    shape = args.mesh
    data = shape.data or 1
    plan = plan_parameters(family, config, data, shape.model, dtype)
    buckets = []
    attention = args.attention or AttentionConfig().impl
    if not args.no_buckets and card is not None and card.vl_template:
        from jaxembed.engine.workloads.plan_vl import plan_vl_memory

        buckets = plan_vl_memory(
            family, config, card, dtype, args.mesh, attention, args.buckets, args.vision_buckets
        )
    elif not args.no_buckets:
        from jaxembed.engine.device.plan_buckets import plan_bucket_memory

        buckets = plan_bucket_memory(
            family, config, card, dtype, args.mesh, attention, args.buckets
        )
    if args.json:
        print(json.dumps({**plan.to_dict(), "buckets": [b.to_dict() for b in buckets]}))
    else:
        from jaxembed.engine.device.plan_buckets import render_buckets

        print(plan.render())
        if buckets:
            print()
            print(render_buckets(buckets))
    return 0


def _add_plan_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plan", help="parameters and bytes per device on a mesh, from shapes only (no weights)"
    )
    p.add_argument("model", help="model directory, card name, or a config.json file")
    p.add_argument(
        "--mesh", type=mesh_shape_arg, default="data=1,model=1", help="e.g. data=2,model=4"
    )
    p.add_argument(
        "--dtype", choices=["float32", "bfloat16"], default=None, help="default: the card's"
    )
    add_attention_option(p)
    p.add_argument(
        "--buckets",
        type=_buckets_arg,
        default=None,
        help="buckets to compile and measure, e.g. 1x8192,4x2048 (default: the largest "
        "bucket at 512, 2k, 8k and 32k tokens up to the model's maximum, and at the maximum)",
    )
    p.add_argument(
        "--vision-buckets",
        type=_buckets_arg,
        default=None,
        help="vision-language models: vision-tower buckets (rows x patches) to compile, e.g. "
        "1x7424,8x1024 (default: the largest image a row holds, a video frame pair, 8x1024); "
        "--buckets then sizes their decoder program (batch x tokens)",
    )
    p.add_argument("--no-buckets", action="store_true", help="parameters only (compile nothing)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=_cmd_plan)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxembed", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "convert", help="convert an HF/sentence-transformers directory to a jaxembed checkpoint"
    )
    p.add_argument("src", help="HF or sentence-transformers model directory")
    p.add_argument(
        "out", nargs="?", default=None, help="output directory (default: checkpoints/<card name>)"
    )
    p.add_argument("--card", default=None, help="use this registry card instead of deriving one")
    p.add_argument(
        "--dtype", choices=["float32", "bfloat16"], default=None, help="default: the card's"
    )
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser(
        "embed", help="print the embedding of each TEXT (and --image/--video file) as a JSON line"
    )
    p.add_argument("texts", nargs="*", metavar="TEXT", help="texts to embed, one JSON line each")
    p.add_argument(
        "--image", action="append", default=[], metavar="FILE", help="an image file (repeatable)"
    )
    p.add_argument(
        "--video", action="append", default=[], metavar="FILE", help="a video file (repeatable)"
    )
    p.add_argument("--video-frames", type=int, default=None, help="frames sampled per video")
    _add_model_options(p)
    p.add_argument("--dimensions", type=int, default=None, help="matryoshka truncation")
    p.add_argument(
        "--truncate", action="store_true", help="truncate over-long texts instead of failing"
    )
    p.add_argument(
        "--prompt",
        default=None,
        help="a prompt name of the card, e.g. query (a Router model: also picks its route)",
    )
    p.add_argument(
        "--chunking",
        action="store_true",
        help="embed over-long texts as windows of the model's length, pooled by token count",
    )
    p.add_argument(
        "--max-embed-len", type=int, default=None, help="most tokens of one chunked text"
    )
    add_attention_option(p)
    p.set_defaults(func=_cmd_embed)

    from jaxembed.bulk.cli import add_parser as add_embed_dataset

    add_embed_dataset(sub, _add_model_options)

    p = sub.add_parser("models", help="list the model cards and where their weights are")
    p.set_defaults(func=_cmd_models)

    _add_plan_command(sub)

    for ep in entry_points(group="jaxembed.commands"):
        ep.load()(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except JaxEmbedError as e:
        print(f"jaxembed {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
