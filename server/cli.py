"""Registers `jaxembed serve` (entry point `jaxembed.commands`)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from jaxembed_server.config import add_serve_arguments

    parser = subparsers.add_parser("serve", help="serve the OpenAI-compatible embeddings API")
    add_serve_arguments(parser)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from jaxembed_server.main import serve

    return serve(args)
