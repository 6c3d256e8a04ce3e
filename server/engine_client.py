"""The front-end's side of `--api-workers N`: a ZeroMQ DEALER connection to the engine process,
and `RemoteRows`, each model's device half as the input half sees it (a `RowBackend`).

Requests sent in one turn of the event loop leave as one message; results and the engine's
status heartbeat arrive on one reader task. A heartbeat older than `stale_after` seconds
means the engine is gone: /ready and new requests answer 503 until it is back.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import Sequence

import numpy as np
import zmq
import zmq.asyncio

from jaxembed.engine.request.jobs import EmbedJob
from jaxembed.engine.request.progress import RequestProgress
from jaxembed.engine.service.backend import (
    EngineFacts,
    EngineStatus,
    RowOptions,
    TextPath,
)
from jaxembed.errors import EngineUnavailableError, OverloadedError
from jaxembed_server import engine_protocol as wire

log = logging.getLogger("jaxembed.server")


class EngineClient:
    def __init__(self, address: str, identity: str, *, stale_after: float = 10.0):
        self.address = address
        self.identity = identity
        self.stale_after = stale_after
        self._context: zmq.asyncio.Context | None = None
        self._socket: zmq.asyncio.Socket | None = None
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future] = {}
        self._rows_out: list[tuple[int, int, list[np.ndarray], RowOptions]] = []
        self._other_out: list[list] = []
        self._flush_scheduled = False
        self._statuses: list[EngineStatus] = []
        self._status_at = 0.0
        self._reader: asyncio.Task | None = None
        self.parent = os.getppid()

    def describe(self, timeout: float = 600.0) -> list[wire.ModelDescription]:
        """What the engine serves (blocking, before this process's event loop exists)."""
        context = zmq.Context()
        sock = context.socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, f"{self.identity}-hello".encode())
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.address)
        try:
            header = _hello(sock, time.monotonic() + timeout, self.address)
        finally:
            sock.close(0)
            context.term()
        return [wire.ModelDescription.from_wire(m) for m in header["models"]]

    async def start(self) -> None:
        """Connect on this event loop and start receiving results and heartbeats."""
        self._context = zmq.asyncio.Context()
        self._socket = self._context.socket(zmq.DEALER)
        self._socket.setsockopt(zmq.IDENTITY, self.identity.encode())
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.connect(self.address)
        await self._socket.send_multipart(wire.pack({"t": wire.HELLO}))  # heartbeats from now on
        self._status_at = time.monotonic()
        self._reader = asyncio.create_task(self._read())

    def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        if self._socket is not None:
            self._socket.close(0)
            self._context.term()

    # -- state --------------------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return time.monotonic() - self._status_at < self.stale_after

    def status(self, model: int) -> EngineStatus | None:
        return self._statuses[model] if self._statuses and self.alive else None

    @property
    def in_flight(self) -> int:
        return len(self._waiting)

    # -- sending ------------------------------------------------------------------------------

    def submit_rows(
        self, model: int, rows: list[np.ndarray], options: RowOptions
    ) -> tuple[int, asyncio.Future]:
        rid, future = self._new_request()
        self._rows_out.append((rid, model, rows, options))
        self._schedule_flush()
        return rid, future

    def submit_items(self, model: int, job: EmbedJob) -> tuple[int, asyncio.Future]:
        rid, future = self._new_request()
        self._other_out.append(
            wire.pack({"t": wire.ITEMS, "id": rid, "model": model, "job": wire.job_to_wire(job)})
        )
        self._schedule_flush()
        return rid, future

    def cancel(self, rid: int) -> None:
        if self._waiting.pop(rid, None) is not None:
            self._other_out.append(wire.pack({"t": wire.CANCEL, "ids": [rid]}))
            self._schedule_flush()

    def _new_request(self) -> tuple[int, asyncio.Future]:
        if not self.alive:
            raise EngineUnavailableError("the engine process is not answering", retry_after=5.0)
        rid = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._waiting[rid] = future
        return rid, future

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        """Everything submitted this turn: row requests in one message, then the rest."""
        self._flush_scheduled = False
        rows_out, self._rows_out = self._rows_out, []
        other, self._other_out = self._other_out, []
        if rows_out:
            lengths, tokens = wire.join_rows([rows for _, _, rows, _ in rows_out])
            header = {
                "t": wire.ROWS,
                "reqs": [
                    [rid, model, len(rows), wire.row_options_to_wire(o)]
                    for rid, model, rows, o in rows_out
                ],
            }
            self._send(wire.pack(header, lengths.data, tokens.data))
        for message in other:
            self._send(message)

    def _send(self, message: list) -> None:
        try:
            self._socket.send_multipart(message, flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:  # the engine stopped reading: fail what was sent, do not block
            log.error("the engine process is not reading; failing the requests of this turn")

    # -- receiving -------------------------------------------------------------------------------

    async def _read(self) -> None:
        while True:
            try:
                if not await self._socket.poll(int(self.stale_after * 1000)):
                    self._check_parent()
                    continue
                header, buffers = wire.unpack(await self._socket.recv_multipart())
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("engine client: a message could not be read")
                continue
            if header["t"] == wire.DONE:
                self._deliver(header["res"], buffers)
            elif header["t"] == wire.MODELS:
                pass  # the answer to this connection's hello
            elif header["t"] == wire.STATUS:
                self._check_parent()
                self._statuses = [wire.status_from_wire(s) for s in header["models"]]
                self._status_at = time.monotonic()

    def _check_parent(self) -> None:
        """The engine process is this process's parent: if it is gone, so is the server."""
        if os.getppid() != self.parent:
            log.error("the engine process exited; this front-end stops too")
            os._exit(1)

    def _deliver(self, results: list, buffers: list[bytes]) -> None:
        for rid, shape, dtype, buffer, tokens, error in results:
            future = self._waiting.pop(rid, None)
            if future is None or future.done():
                continue  # cancelled meanwhile
            if error is not None:
                future.set_exception(wire.error_from_wire(error))
                continue
            vectors = np.frombuffer(buffers[buffer], dtype=np.dtype(dtype)).reshape(shape)
            future.set_result((vectors, tokens))

    async def wait_idle(self, timeout: float) -> bool:
        """Until no request of this front-end is in the engine (drain), at most `timeout` s."""
        deadline = time.monotonic() + timeout
        while self._waiting and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return not self._waiting


class RemoteRows:
    """One model's device half in the engine process, seen from a front-end (`RowBackend`)."""

    def __init__(self, client: EngineClient, model: int, facts: EngineFacts, max_queued: int):
        self.client = client
        self.model = model
        self._facts = facts
        self.max_queued = max_queued

    async def embed_rows(
        self, rows: list[np.ndarray], options: RowOptions, progress: RequestProgress
    ) -> np.ndarray:
        rid, future = self.client.submit_rows(self.model, rows, options)
        vectors, _ = await self._wait(rid, future)
        progress.add_rows(len(rows))
        return vectors

    async def embed_items(
        self, job: EmbedJob, progress: RequestProgress, texts: TextPath
    ) -> tuple[np.ndarray, int]:
        """The whole job runs in the engine process (its media are bytes already; its texts
        are tokenised there); `texts` is this process's text path, not needed here."""
        rid, future = self.client.submit_items(self.model, job)
        vectors, tokens = await self._wait(rid, future)
        progress.add_rows(len(vectors))
        return vectors, tokens

    async def _wait(self, rid: int, future: asyncio.Future):
        try:
            return await future
        except asyncio.CancelledError:
            self.client.cancel(rid)  # a client that went away frees its rows in the engine
            raise

    def check_capacity(self) -> None:
        status = self.status()
        if status.queued_requests >= self.max_queued:
            raise OverloadedError(
                f"the queue is full ({status.queued_requests} requests waiting)", retry_after=1.0
            )

    def unhealthy(self) -> str | None:
        return self.status().unhealthy

    def status(self) -> EngineStatus:
        status = self.client.status(self.model)
        if status is None:
            return EngineStatus(
                warm=True,
                unhealthy="the engine process is not answering",
                queued_requests=0,
                queued_tokens=0,
                active_requests=0,
                cache_bytes=0,
                lazy_compiles=0,
            )
        return status

    def facts(self) -> EngineFacts:
        return self._facts

    def start(self, *, warmup: bool = True, progress=None) -> None:
        """The engine process starts and warms the model; nothing to do here."""

    def close(self, timeout: float = 30.0) -> bool:
        """Draining is waiting for this front-end's requests in the engine (see
        `EngineClient.wait_idle`, which the front-end awaits before it stops)."""
        return True


def remote_backends(
    client: EngineClient, descriptions: Sequence[wire.ModelDescription], max_queued: Sequence[int]
) -> list[RemoteRows]:
    return [
        RemoteRows(client, i, d.facts, limit)
        for i, (d, limit) in enumerate(zip(descriptions, max_queued, strict=True))
    ]


def _hello(sock: zmq.Socket, deadline: float, address: str) -> dict:
    """Say hello until the engine answers with its models (it may still be loading them)."""
    while time.monotonic() < deadline:
        sock.send_multipart(wire.pack({"t": wire.HELLO}))
        if sock.poll(1000):
            header, _ = wire.unpack(sock.recv_multipart())
            if header["t"] == wire.MODELS:
                return header
    raise TimeoutError(f"the engine process at {address} did not answer")
