"""`jaxembed serve`: load the model, build the app, run Sanic in one process that owns the devices.

With `--distributed --multihost global`, process 0 becomes the leader (HTTP,
batcher, batch broadcast) and every other process a follower that runs the
same compiled steps and serves nothing itself.
"""

from __future__ import annotations

import argparse
import logging
import os
import time

import jax
from jax.sharding import Mesh

from jaxembed.engine.embedder import Embedder
from jaxembed.engine.group_runner import BroadcastingRunner, follow_leader
from jaxembed.engine.memory import device_memory_bytes
from jaxembed.errors import JaxEmbedError
from jaxembed.parallel import distributed, multihost
from jaxembed.parallel.mesh import describe, make_mesh
from jaxembed_server.app import create_app
from jaxembed_server.config import ServerConfig, config_from_args
from jaxembed_server.logs import configure_logging

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


def build_embedder(config: ServerConfig, mesh: Mesh | None = None) -> Embedder:
    grid_options = {
        "token_budget": config.token_budget,
        "packing": config.packing,
        "attention": config.attention,
        "warmup_max_len": config.warmup_max_len,
        "max_embed_len": config.max_embed_len,
    }
    if config.batch_sizes:
        grid_options["batch_sizes"] = config.batch_sizes
    if config.seq_lengths:
        grid_options["seq_lengths"] = config.seq_lengths
    return Embedder.from_pretrained(
        config.model,
        dtype=config.dtype,
        mesh=mesh,
        compile_cache_dir=config.compile_cache,
        **grid_options,
    )


def check_memory(config: ServerConfig, embedder: Embedder) -> None:
    """Fit the bucket grid into `--memory-fraction` of a device (compiled programs' own bytes)."""
    memory = device_memory_bytes(config.device_memory_gib)
    if memory is None:
        log.info(
            "device memory not reported by the %s backend: the bucket grid is not checked "
            "against it (pass --device-memory-gib to check)",
            jax.default_backend(),
        )
        return
    budget = int(memory * config.memory_fraction)
    start = time.perf_counter()
    embedder.fit_memory(budget)
    log.info(
        "memory plan: every bucket fits %.2f GiB per device (%.0f%% of %.2f GiB), checked in %.1f s",
        budget / 2**30,
        config.memory_fraction * 100,
        memory / 2**30,
        time.perf_counter() - start,
    )


def run_follower(config: ServerConfig, embedder: Embedder) -> int:
    """A non-leader process of a global multi-host group: compile, then follow the leader."""
    seconds = embedder.runner.warmup(max_len=embedder.warmup_max_len)
    log.info("follower warm-up: %d buckets in %.1f s", len(embedder.grid.buckets()), seconds)
    address = distributed.control_address(config.distributed)
    log.info("process %d following the leader at %s:%d", jax.process_index(), *address)
    sock = multihost.connect_to_leader(address, jax.process_index())
    return follow_leader(embedder.runner, sock)


def serve(args: argparse.Namespace) -> int:
    configure_logging(args.log_level, args.log_format)
    config = config_from_args(args)
    dist = config.distributed
    try:
        if dist is not None:
            distributed.initialize(dist)
        mesh = make_mesh(config.mesh, distributed.serving_devices(dist))
        embedder = build_embedder(config, mesh)
    except (JaxEmbedError, ValueError, RuntimeError) as e:
        log.error("cannot start: %s", e)
        return 2
    group = dist is not None and dist.mode == "global" and jax.process_count() > 1
    if group and embedder.images is not None:
        log.error(
            "cannot start: image/video models are not supported with --multihost global yet "
            "(use --multihost replica)"
        )
        return 2
    if config.lora or config.lora_root:
        if group:
            log.error("LoRA adapters are not supported with --multihost global yet")
            return 2
        try:
            embedder.enable_lora(max_loras=config.max_loras, max_rank=config.max_lora_rank)
            for name, path in config.lora:  # preloaded adapters stay resident (never released)
                embedder.adapter_slot(name, path)
                log.info("loaded LoRA adapter %s", name)
        except JaxEmbedError as e:
            log.error("cannot load a --lora adapter: %s", e)
            return 2
    try:  # after packing and LoRA are settled: the programs checked are those warm-up runs
        check_memory(config, embedder)
    except JaxEmbedError as e:
        log.error("cannot start: %s", e)
        return 2
    if group and jax.process_index() != 0:
        rc = run_follower(config, embedder)
        if rc:
            _exit_broken_group(rc)
        return rc
    channel = None
    if group:
        host, port = distributed.control_address(dist)
        # Loopback stays loopback (tests, one machine); otherwise listen on every interface.
        bind = host if host in ("127.0.0.1", "localhost", "::1") else "0.0.0.0"
        channel = multihost.LeaderChannel(
            (bind, port),
            jax.process_count() - 1,
            heartbeat_timeout=dist.heartbeat_timeout,
        )
        embedder.runner = BroadcastingRunner(embedder.runner, channel)
    log.info(
        "loaded %s (%s, %s) in %.2f s from %s on mesh %s; %d buckets, token budget %d",
        embedder.card.name,
        embedder.model.source_format,
        embedder.model.dtype,
        embedder.model.load_seconds,
        embedder.model.model_dir,
        describe(mesh),
        len(embedder.grid.buckets()),
        embedder.grid.token_budget,
    )
    app = create_app(config, embedder, fault_hook=fault_hook_from_env())
    # One process: it owns the JAX devices. Sanic handles SIGINT/SIGTERM with a graceful stop.
    try:
        app.run(
            host=config.host, port=config.port, single_process=True, motd=False, access_log=False
        )
    finally:
        if channel is not None:
            lost = channel.unhealthy_reason()
            channel.close()  # followers exit when the leader does
            if lost:
                _exit_broken_group(1)
    return 0


def _exit_broken_group(rc: int) -> None:
    """Exit now, skipping JAX's shutdown barrier, which waits for (then aborts over) a dead peer.

    Non-zero so that an orchestrator (JobSet, LeaderWorkerSet) restarts the group.
    """
    log.error("the process group is broken; exiting with %d without the shutdown barrier", rc)
    logging.shutdown()
    os._exit(rc)
