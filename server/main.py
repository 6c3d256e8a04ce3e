"""`jaxembed serve`: load the model, build the app, run Sanic in one process that owns the devices."""

from __future__ import annotations

import argparse
import logging

from jaxembed.engine.embedder import Embedder
from jaxembed.errors import JaxEmbedError
from server.app import create_app
from server.config import ServerConfig, config_from_args

log = logging.getLogger("jaxembed.server")


def build_embedder(config: ServerConfig) -> Embedder:
    grid_options = {"token_budget": config.token_budget}
    if config.batch_sizes:
        grid_options["batch_sizes"] = config.batch_sizes
    if config.seq_lengths:
        grid_options["seq_lengths"] = config.seq_lengths
    return Embedder.from_pretrained(
        config.model, dtype=config.dtype, compile_cache_dir=config.compile_cache, **grid_options
    )


def serve(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    config = config_from_args(args)
    try:
        embedder = build_embedder(config)
    except JaxEmbedError as e:
        log.error("cannot load the model: %s", e)
        return 2
    log.info(
        "loaded %s (%s, %s) in %.2f s from %s; %d buckets, token budget %d",
        embedder.card.name,
        embedder.model.source_format,
        embedder.model.dtype,
        embedder.model.load_seconds,
        embedder.model.model_dir,
        len(embedder.grid.buckets()),
        embedder.grid.token_budget,
    )
    app = create_app(config, embedder)
    # One process: it owns the JAX devices. Sanic handles SIGINT/SIGTERM with a graceful stop.
    app.run(host=config.host, port=config.port, single_process=True, motd=False, access_log=False)
    return 0
