"""`jaxembed serve`: load the model, build the app, run Sanic in one process that owns the devices."""

from __future__ import annotations

import argparse
import logging
import os

from jaxembed.engine.embedder import Embedder
from jaxembed.errors import JaxEmbedError
from server.app import create_app
from server.config import ServerConfig, config_from_args

log = logging.getLogger("jaxembed.server")

# Test hook: a batch holding this token id raises inside the engine, as a device fault would.
FAULT_TOKEN_ENV = "JAXEMBED_TEST_FAULT_TOKEN_ID"


def fault_hook_from_env():
    value = os.environ.get(FAULT_TOKEN_ENV)
    if not value:
        return None
    poison = int(value)
    log.warning("fault injection is enabled: batches containing token id %d will fail", poison)

    def hook(token_lists) -> None:
        if any(poison in tokens for tokens in token_lists):
            raise RuntimeError(f"injected engine fault (token id {poison})")

    return hook


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
    level = args.log_level.upper()
    # force=True: an imported library may already have configured the root logger, which
    # would make this call a no-op and leave jaxembed's INFO lines (model load, warm-up
    # progress, request users, drain) below the root's WARNING level.
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    logging.getLogger("jaxembed").setLevel(level)
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
    app = create_app(config, embedder, fault_hook=fault_hook_from_env())
    # One process: it owns the JAX devices. Sanic handles SIGINT/SIGTERM with a graceful stop.
    app.run(host=config.host, port=config.port, single_process=True, motd=False, access_log=False)
    return 0
