"""`jaxembed` command line: convert, embed, models — and subcommands contributed by plugins.

`serve` comes from the `server` package through the `jaxembed.commands`
entry-point group, so the library itself never imports the HTTP layer.
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib.metadata import entry_points

from jaxembed.errors import JaxEmbedError


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
    from jaxembed.engine.embedder import Embedder

    embedder = Embedder.from_pretrained(
        args.model, dtype=args.dtype, compile_cache_dir=args.compile_cache
    )
    vectors = embedder.embed(
        args.texts, truncate=args.truncate, dimensions=args.dimensions, prompt_name=args.prompt
    )
    for text, vector in zip(args.texts, vectors, strict=True):
        print(json.dumps({"text": text, "embedding": [round(float(x), 7) for x in vector]}))
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from jaxembed.errors import ModelLoadError
    from jaxembed.registry import registry_cards, resolve_model

    for name, card in registry_cards().items():
        try:
            where = str(resolve_model(name)[0])
        except ModelLoadError:
            where = "(weights not installed or converted)"
        print(f"{name:28s} {card.family:12s} {card.pooling:10s} dim={card.dimensions:<5d} {where}")
    return 0


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
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default=None)
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser("embed", help="print the embedding of each TEXT as a JSON line")
    p.add_argument("texts", nargs="+", metavar="TEXT")
    _add_model_options(p)
    p.add_argument("--dimensions", type=int, default=None, help="matryoshka truncation")
    p.add_argument(
        "--truncate", action="store_true", help="truncate over-long texts instead of failing"
    )
    p.add_argument("--prompt", default=None, help="a prompt name of the card, e.g. query")
    p.set_defaults(func=_cmd_embed)

    p = sub.add_parser("models", help="list the model cards and where their weights are")
    p.set_defaults(func=_cmd_models)

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
