"""`jaxembed serve --api-workers N`: this process owns the devices and runs every model's device
half (batchers, cache, adapters) behind the engine transport; N front-end processes
(server/frontend.py) run the HTTP layer on one listening socket opened here.

Lifecycle: the socket is bound before the models load (a taken port is a one-line error);
front-ends start at once and answer /ready 503 until the engine is warm; a front-end that
dies is restarted; SIGTERM or SIGINT makes every front-end drain (finish what it accepted,
refuse new work with 503 + Retry-After) while the engine keeps serving them, then the
engine drains and this process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

from jaxembed.engine.batching.batcher import FaultHook
from jaxembed.engine.model import EngineModel
from jaxembed_server import startup
from jaxembed_server.app import build_services, warmup_progress
from jaxembed_server.config import ServerConfig
from jaxembed_server.engine_host import EngineHost, HostedModel
from jaxembed_server.metrics import Metrics, enable_multiprocess, forget_process

log = logging.getLogger("jaxembed.server")

RESTARTS_PER_MINUTE = 10
STOP_MARGIN_SECONDS = 15.0  # beyond --drain-timeout, before a front-end is killed


def listen(host: str, port: int, *, backlog: int | None = 4096) -> socket.socket:
    """The socket every front-end accepts on (OSError if the address is taken). With
    `backlog=None` it is bound but not yet listening: connections are refused, not queued,
    until the server listens on it (asyncio does when serving starts)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        if backlog is not None:
            sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


class Supervisor:
    def __init__(
        self,
        config: ServerConfig,
        embedders: Sequence[EngineModel],
        serve_argv: Sequence[str],
        listener: socket.socket,
        *,
        fault_hook: FaultHook | None = None,
    ):
        self.config = config
        self.serve_argv = list(serve_argv)
        self.listener = listener
        self.workdir = tempfile.mkdtemp(prefix="jaxembed-serve-")
        enable_multiprocess(os.path.join(self.workdir, "metrics"))
        os.makedirs(os.path.join(self.workdir, "metrics"))
        # One hosted model per entry (per route of a Router model): the front-ends group them.
        services = build_services(config, embedders, Metrics(), fault_hook)
        self.models = [
            HostedModel(model_config.names(embedder.card.names), service)
            for model_config, embedder, service in zip(
                config.model_configs(), embedders, services, strict=True
            )
        ]
        self.address = f"ipc://{self.workdir}/engine"
        self.workers: dict[int, subprocess.Popen] = {}
        self._restarts: list[float] = []

    def run(self) -> int:
        try:
            return asyncio.run(self._main())
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)

    async def _main(self) -> int:
        stop, host_stop = asyncio.Event(), asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        host = EngineHost(self.models, self.address)
        host_task = asyncio.create_task(host.serve(host_stop))
        self._start_models()
        for index in range(self.config.http_processes):
            self._spawn(index)
        host_name, port = self.listener.getsockname()[:2]
        startup.log_listening(
            host_name,
            port,
            f" with {len(self.workers)} HTTP front-end processes over one engine process",
        )
        ready = asyncio.create_task(
            startup.log_when_ready([m.service for m in self.models], self.config.warmup)
        )
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
            self._replace_dead_workers(stop)
        ready.cancel()
        drained = await self._stop_workers()
        results = await asyncio.gather(
            *(
                loop.run_in_executor(None, m.service.close, self.config.drain_timeout)
                for m in self.models
            )
        )
        host_stop.set()
        await host_task
        host.close()
        log.info("shutdown: %s", "drained" if drained and all(results) else "drain timed out")
        return 0

    def _start_models(self) -> None:
        for model in self.models:
            progress = warmup_progress(model.names[0], model.service)
            model.service.start(warmup=self.config.warmup, progress=progress)

    def _spawn(self, index: int) -> None:
        fd = self.listener.fileno()
        argv = [
            sys.executable,
            "-m",
            "jaxembed_server.frontend",
            *self.serve_argv,
            "--engine-address",
            self.address,
            "--listen-fd",
            str(fd),
            "--worker-index",
            str(index),
        ]
        self.workers[index] = subprocess.Popen(argv, pass_fds=(fd,))

    def _replace_dead_workers(self, stop: asyncio.Event) -> None:
        for index, proc in list(self.workers.items()):
            if proc.poll() is None or stop.is_set():
                continue
            forget_process(proc.pid)
            now = time.monotonic()
            self._restarts = [t for t in self._restarts if now - t < 60] + [now]
            if len(self._restarts) > RESTARTS_PER_MINUTE:
                log.error(
                    "front-ends keep dying (%d restarts in a minute); stopping", RESTARTS_PER_MINUTE
                )
                stop.set()
                return
            log.error("front-end %d exited with %s; starting another", index, proc.returncode)
            self._spawn(index)

    async def _stop_workers(self) -> bool:
        """SIGTERM to every front-end (each drains), then wait; kill what outlives the margin.
        This process's copy of the socket closes first, so once the front-ends stop accepting,
        new connections are refused rather than left in the backlog."""
        self.listener.close()
        for proc in self.workers.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.config.drain_timeout + STOP_MARGIN_SECONDS
        while time.monotonic() < deadline and any(p.poll() is None for p in self.workers.values()):
            await asyncio.sleep(0.05)
        clean = True
        for proc in self.workers.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
                clean = False
            clean = clean and proc.returncode == 0
            forget_process(proc.pid)
        return clean
