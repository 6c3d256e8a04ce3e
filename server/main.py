"""`jaxembed serve`: load the model, build the app, run Sanic in one process that owns the devices.

With `--distributed --multihost global`, process 0 becomes the leader (HTTP,
batcher, batch broadcast) and every other process a follower that runs the
same compiled steps and serves nothing itself.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys

import jax

from jaxembed.engine.device.compile_cache import cache_counts, default_cache_dir
from jaxembed.engine.device.group_runner import follow_leader, lead
from jaxembed.engine.model import EngineModel
from jaxembed.errors import JaxEmbedError
from jaxembed.parallel import distributed, pod
from jaxembed.parallel.mesh import make_mesh
from jaxembed_server import startup
from jaxembed_server.app import create_app
from jaxembed_server.config import ServerConfig, config_from_args
from jaxembed_server.loading import check_memory, load_models
from jaxembed_server.logs import configure_logging
from jaxembed_server.supervisor import Supervisor, listen

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


def run_follower(config: ServerConfig, embedders: list[EngineModel]) -> int:
    """A non-leader process of a global multi-host group: compile what the leader compiles
    before ready (its liveness rounds already answered meanwhile), then follow the leader (its
    steps name the model by its index here, the same order as the leader's)."""
    liveness = pod.Liveness(config.distributed.heartbeat_timeout)
    for embedder in embedders:
        seconds = embedder.warmup()
        log.info(
            "follower warm-up %s: %d programs in %.1f s",
            embedder.card.name,
            len(embedder.runner.compile_log),
            seconds,
        )
    log.info("process %d following the leader", jax.process_index())
    return follow_leader(embedders, liveness=liveness)


def load(config: ServerConfig) -> list[EngineModel]:
    """Every model's engine on its mesh, LoRA settled, the memory plan checked."""
    dist = config.distributed
    if dist is not None:
        distributed.initialize(dist)
    devices = distributed.serving_devices(dist)
    embedders = load_models(config, devices, make_mesh(config.mesh, devices))
    check_memory(config, embedders)
    return embedders


def apply_xla_options(config: ServerConfig) -> None:
    """XLA flags from our options, set before the first backend use reads `XLA_FLAGS`."""
    if config.xla_gpu_autotune_level is not None:
        flags = os.environ.get("XLA_FLAGS", "")
        flags = " ".join(f for f in flags.split() if not f.startswith("--xla_gpu_autotune_level"))
        level = f"--xla_gpu_autotune_level={config.xla_gpu_autotune_level}"
        os.environ["XLA_FLAGS"] = f"{flags} {level}".strip()


def serve(args: argparse.Namespace) -> int:
    startup.mark_started()
    configure_logging(args.log_level, args.log_format)
    try:
        config = config_from_args(args)
        apply_xla_options(config)
        listener = bind_listener(config)  # a taken port fails now, not after minutes of loading
        embedders = load(config)
    except (JaxEmbedError, ValueError, RuntimeError) as e:
        log.error("cannot start: %s", e)
        return 2
    if listener is not None and config.http_processes > 1:
        argv = sys.argv[sys.argv.index("serve") + 1 :]
        return Supervisor(config, embedders, argv, listener, fault_hook=fault_hook_from_env()).run()
    dist = config.distributed
    group = dist is not None and dist.mode == "global" and jax.process_count() > 1
    if group and jax.process_index() != 0:
        rc = run_follower(config, embedders)
        if rc:
            _exit_broken_group(rc)
        return rc
    channel = None
    if group:
        channel = pod.PodLeader(heartbeat_timeout=dist.heartbeat_timeout)
        lead(embedders, channel)
    try:
        app = create_app(config, embedders, fault_hook=fault_hook_from_env())
    except ValueError as e:  # e.g. two models answering to the same name
        log.error("cannot start: %s", e)
        return 2
    # One process: it owns the JAX devices. Sanic handles SIGINT/SIGTERM with a graceful stop.
    try:
        if listener is not None:
            app.run(sock=listener, single_process=True, motd=False, access_log=False)
        else:  # a process group's leader: bound only once the group stands
            app.run(
                host=config.host,
                port=config.port,
                single_process=True,
                motd=False,
                access_log=False,
            )
    finally:
        if channel is not None:
            lost = channel.unhealthy_reason()
            channel.close()  # followers exit when the leader does
            if lost:
                _exit_broken_group(1)
    return 0


def warmup(args: argparse.Namespace) -> int:
    """`jaxembed warmup`: what `serve` with the same options would compile, compiled into the
    persistent cache (its key is the program and the device kind: run it on the host kind the
    replicas use), then exit."""
    configure_logging(args.log_level, args.log_format)
    try:
        config = config_from_args(args)
        apply_xla_options(config)
        embedders = load(config)
    except (JaxEmbedError, ValueError, RuntimeError) as e:
        log.error("cannot warm up: %s", e)
        return 2
    counts = cache_counts()
    for model, embedder in zip(config.model_configs(), embedders, strict=True):
        seconds = embedder.warmup()
        log.info(
            "warm-up %s: %d programs in %.1f s",
            model.label or embedder.card.name,
            len(embedder.runner.compile_log),
            seconds,
        )
    log.info(
        "compile cache %s: %d programs loaded from it, %d compiled into it",
        default_cache_dir() if config.compile_cache is None else config.compile_cache,
        counts.hits,
        counts.misses,
    )
    return 0


def bind_listener(config: ServerConfig) -> socket.socket | None:
    """The HTTP socket (shared by the front-ends when there are several), bound before the
    models load so that a taken port is a one-line error at once; None for a process group
    (only its leader listens, once the group is up)."""
    if config.distributed is not None:
        if config.api_workers is not None and config.api_workers > 1:
            raise ValueError("--api-workers > 1 is not supported with --distributed yet")
        return None
    several = config.http_processes > 1  # the front-ends' shared socket listens at once
    try:
        return listen(config.host, config.port, backlog=4096 if several else None)
    except OSError as e:
        raise RuntimeError(
            f"cannot listen on {startup.url(config.host, config.port)}: {e.strerror}"
        ) from None


def _exit_broken_group(rc: int) -> None:
    """Exit now, skipping JAX's shutdown barrier, which waits for (then aborts over) a dead peer.

    Non-zero so that an orchestrator (JobSet, LeaderWorkerSet) restarts the group.
    """
    log.error("the process group is broken; exiting with %d without the shutdown barrier", rc)
    logging.shutdown()
    os._exit(rc)
