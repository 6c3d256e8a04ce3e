"""One HTTP front-end process of `jaxembed serve --api-workers N` (started by the engine
process, never by hand): the full HTTP layer — parsing, validation, tokenisation, media
fetching, answers in every API's shape — over the engine process's models.

    python -m jaxembed_server.frontend <serve options> --engine-address ADDR --listen-fd FD \
        --worker-index I

It re-reads the same `jaxembed serve` options (so limits, keys and model names are the
operator's), asks the engine for what it serves (cards, tokenizers' directories, facts),
builds each model's input half over `RemoteRows`, and accepts connections on the listening
socket the engine process opened and shares with every front-end.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import os
import signal
import socket
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # a front-end never touches an accelerator

from jaxembed.engine.inputs.text import ModelInputs
from jaxembed.engine.service.embedding import EmbeddingService
from jaxembed_server import engine_protocol as wire
from jaxembed_server.app import build_app, service_config, service_label
from jaxembed_server.config import ServerConfig, add_serve_arguments, config_from_args
from jaxembed_server.engine_client import EngineClient, RemoteRows
from jaxembed_server.logs import configure_logging
from jaxembed_server.metrics import Metrics
from jaxembed_server.served import ServedModels, serve_models

PR_SET_PDEATHSIG = 1


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="jaxembed-frontend", description=__doc__.splitlines()[0])
    add_serve_arguments(parser)
    parser.add_argument("--engine-address", required=True)
    parser.add_argument("--listen-fd", type=int, required=True)
    parser.add_argument("--worker-index", type=int, default=0)
    return parser.parse_args(argv)


def build_models(
    config: ServerConfig, client: EngineClient, descriptions: list[wire.ModelDescription]
) -> ServedModels:
    """Each model's input half here, over its device half in the engine process."""
    services = []
    for index, (model_config, description) in enumerate(
        zip(config.model_configs(), descriptions, strict=True)
    ):
        settings = service_config(config, model_config)
        inputs = ModelInputs.from_spec(description.inputs)
        backend = RemoteRows(client, index, description.facts, settings.queue.max_queued_requests)
        service = EmbeddingService(
            inputs,
            backend,
            settings,
            name=service_label(model_config, description.names),
            calibration_key=description.facts.calibration_key,
        )
        services.append(service)
    names = [description.names for description in descriptions]
    return serve_models(config.model_configs(), services, names)


def die_with_parent() -> None:
    """Linux: the kernel ends this process when the engine process (its parent) dies, however
    it dies; elsewhere the engine client notices a vanished parent on its own."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def main(argv: list[str] | None = None) -> int:
    die_with_parent()
    args = parse_args(sys.argv[1:] if argv is None else argv)
    configure_logging(args.log_level, args.log_format)
    config = config_from_args(args)
    identity = f"frontend-{args.worker_index}-{os.getpid()}"
    client = EngineClient(args.engine_address, identity)
    descriptions = client.describe()
    app = build_app(
        config, build_models(config, client, descriptions), Metrics(), drain=client.wait_idle
    )

    async def start_client(app) -> None:
        await client.start()

    async def stop_client(app) -> None:
        client.close()

    app.before_server_start(start_client, priority=0)
    app.after_server_stop(stop_client)
    listener = socket.socket(fileno=args.listen_fd)
    app.run(sock=listener, single_process=True, motd=False, access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
