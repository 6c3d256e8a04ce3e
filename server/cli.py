"""Registers `jaxembed serve` and `jaxembed warmup` (entry point `jaxembed.commands`)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from jaxembed_server.config import add_serve_arguments

    parser = subparsers.add_parser("serve", help="serve the OpenAI-compatible embeddings API")
    add_serve_arguments(parser)
    parser.set_defaults(func=_run)
    warm = subparsers.add_parser(
        "warmup",
        help="compile every bucket program of `serve` with the same options into the compile "
        "cache, then exit (an image build or an init container; replicas then start warm)",
    )
    warm.add_argument(
        "spec", nargs="?", default=None, metavar="MODEL", help="the model (same as --model)"
    )
    add_serve_arguments(warm)
    warm.set_defaults(func=_warmup)


def _run(args: argparse.Namespace) -> int:
    from jaxembed_server.main import serve

    return serve(args)


def _warmup(args: argparse.Namespace) -> int:
    from jaxembed_server.main import warmup

    if args.spec is not None:
        args.model = [args.spec, *args.model]
    return warmup(args)
