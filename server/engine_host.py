"""The engine process's side of `--api-workers N`: one ZeroMQ ROUTER socket through which the
HTTP front-ends reach every model's device half.

Requests arrive many to a message (engine_protocol.py); each becomes a task on this
process's event loop that awaits the model's `RowEngine` (batcher, cache, adapters,
admission), so requests of all front-ends share device batches, priorities and fair turns
exactly as the requests of one process do. Results leave batched per front-end, once per
turn of the loop. A status heartbeat (queues, warm-up, health, adapters) goes to every
front-end every `status_interval` seconds; front-ends read /ready, /metrics and the queue
check from it, and treat its absence as a lost engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Sequence

import numpy as np
import zmq
import zmq.asyncio

from jaxembed.engine.request.progress import RequestProgress
from jaxembed.engine.service.embedding import EmbeddingService
from jaxembed.engine.service.rows import RowEngine
from jaxembed_server import engine_protocol as wire

log = logging.getLogger("jaxembed.server")


@dataclasses.dataclass
class HostedModel:
    names: tuple[str, ...]
    service: EmbeddingService  # this process's own service: its backend is a RowEngine

    @property
    def rows(self) -> RowEngine:
        return self.service.backend

    def description(self) -> wire.ModelDescription:
        return wire.ModelDescription(self.names, self.service.inputs.spec(), self.service.facts)


class EngineHost:
    def __init__(
        self, models: Sequence[HostedModel], address: str, *, status_interval: float = 0.05
    ):
        self.models = list(models)
        self.address = address
        self.status_interval = status_interval
        self._context = zmq.asyncio.Context()
        self._socket = self._context.socket(zmq.ROUTER)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.bind(address)
        self._peers: set[bytes] = set()
        self._tasks: dict[tuple[bytes, int], asyncio.Task] = {}
        self._outbox: dict[bytes, list] = {}
        self._flush_scheduled = False

    async def serve(self, stop: asyncio.Event) -> None:
        """Answer front-ends until `stop` is set."""
        heartbeat = asyncio.create_task(self._heartbeat(stop))
        receiver = asyncio.create_task(self._receive())
        await stop.wait()
        receiver.cancel()
        heartbeat.cancel()
        for task in (receiver, heartbeat):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def close(self) -> None:
        self._socket.close(0)
        self._context.term()

    # -- receiving ------------------------------------------------------------------------------

    async def _receive(self) -> None:
        while True:
            peer, *frames = await self._socket.recv_multipart(copy=True)
            try:
                header, buffers = wire.unpack(frames)
                self._handle(peer, header, buffers)
            except Exception:  # one bad message must not stop the engine
                log.exception("engine host: a message from %r could not be handled", peer)

    def _handle(self, peer: bytes, header: dict, buffers: list[bytes]) -> None:
        kind = header["t"]
        if kind == wire.ROWS:
            self._start_rows(peer, header["reqs"], buffers)
        elif kind == wire.ITEMS:
            job = wire.job_from_wire(header["job"])
            self._start(peer, header["id"], self._items(header["model"], job))
        elif kind == wire.CANCEL:
            for rid in header["ids"]:
                if (task := self._tasks.get((peer, rid))) is not None:
                    task.cancel()
        elif kind == wire.HELLO:
            self._peers.add(peer)
            models = [m.description().to_wire() for m in self.models]
            self._socket.send_multipart([peer, *wire.pack({"t": wire.MODELS, "models": models})])

    def _start_rows(self, peer: bytes, requests: list, buffers: list[bytes]) -> None:
        lengths, tokens = buffers
        rows = wire.split_rows(lengths, tokens, [r[2] for r in requests])
        for (rid, model, _, options), own in zip(requests, rows, strict=True):
            row_options = wire.row_options_from_wire(options)
            self._start(peer, rid, self._rows(model, own, row_options))

    def _start(self, peer: bytes, rid: int, work) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks[(peer, rid)] = task
        task.add_done_callback(lambda t: self._finished(peer, rid, t))

    async def _rows(self, model: int, rows: list[np.ndarray], options) -> tuple[np.ndarray, int]:
        vectors = await self.models[model].rows.embed_rows(rows, options, RequestProgress())
        return vectors, 0

    async def _items(self, model: int, job) -> tuple[np.ndarray, int]:
        """A multimodal job, run by this process's own service (item texts included)."""
        service = self.models[model].service
        progress = RequestProgress()
        return await service.backend.embed_items(
            job, progress, lambda texts: service.embed_texts(texts, job.options, progress)
        )

    # -- answering --------------------------------------------------------------------------------

    def _finished(self, peer: bytes, rid: int, task: asyncio.Task) -> None:
        self._tasks.pop((peer, rid), None)
        if task.cancelled():
            return  # the front-end gave up on it: nobody waits for an answer
        error = task.exception()
        result = (rid, None, 0, wire.error_to_wire(error)) if error else (rid, *task.result(), None)
        if error is not None and not isinstance(error, Exception):
            raise error
        self._outbox.setdefault(peer, []).append(result)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        """Every result finished this turn, one message per front-end."""
        self._flush_scheduled = False
        outbox, self._outbox = self._outbox, {}
        for peer, results in outbox.items():
            header, buffers = [], []
            for rid, vectors, tokens, error in results:
                if error is not None:
                    header.append([rid, None, None, None, 0, error])
                    continue
                array = np.ascontiguousarray(vectors)
                header.append([rid, list(array.shape), array.dtype.str, len(buffers), tokens, None])
                buffers.append(array.data)
            self._socket.send_multipart(
                [peer, *wire.pack({"t": wire.DONE, "res": header}, *buffers)]
            )

    async def _heartbeat(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if self._peers:
                statuses = [wire.status_to_wire(m.rows.status()) for m in self.models]
                message = wire.pack({"t": wire.STATUS, "models": statuses})
                for peer in list(self._peers):
                    with contextlib.suppress(zmq.ZMQError):
                        self._socket.send_multipart([peer, *message], flags=zmq.NOBLOCK)
            await asyncio.sleep(self.status_interval)
