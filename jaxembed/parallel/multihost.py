"""One model over several processes: the channel on which the leader broadcasts each batch.

With a mesh spanning hosts, every process must launch the same compiled
program on the same inputs in the same order. Process 0 (the leader) owns
HTTP and the batcher; before it dispatches a batch it sends the batch's two
arrays (ids + mask, or ids + segment ids for a packed batch) to every follower
over a plain TCP channel, and each follower runs the same bucket program on
them (`follow`). The step's collectives then line up. This module is only the
transport: which program a batch runs is the engine's (engine/group_runner.py).

The channel is also the health signal. Followers send a heartbeat byte every
`HEARTBEAT_INTERVAL` seconds; a follower whose socket closes (the process
died) or goes quiet for `heartbeat_timeout` makes the leader unhealthy, so
`/ready` turns false and new batches fail fast with `EngineUnavailableError`
instead of hanging in a collective that can never complete. When the leader
stops it sends STOP and followers exit 0; when the leader dies their socket
closes and they exit too.
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from jaxembed.errors import EngineUnavailableError

log = logging.getLogger("jaxembed.multihost")

HEARTBEAT_INTERVAL = 1.0
DEFAULT_HEARTBEAT_TIMEOUT = 5.0
_HELLO = struct.Struct("!4sI")  # b"JXEH", process id
_HEADER = struct.Struct("!4sII")  # op, batch, seq
_RUN, _PACKED, _STOP, _BEAT = b"RUN ", b"PACK", b"STOP", b"\x01"

# What a follower does with a batch: (ids, mask or segment ids, packed) → device result.
Execute = Callable[[np.ndarray, np.ndarray, bool], Any]


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    chunks, remaining = [], n
    while remaining:
        chunk = sock.recv(min(remaining, 1 << 20))
        if not chunk:
            raise ConnectionError("connection closed")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


class LeaderChannel:
    """Leader side: accepts the followers, broadcasts batches, watches their heartbeats."""

    def __init__(
        self,
        bind: tuple[str, int],
        followers: int,
        *,
        heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT,
    ):
        self.expected = followers
        self.heartbeat_timeout = heartbeat_timeout
        self._server = socket.create_server(bind, reuse_port=False)
        self.address = self._server.getsockname()[:2]
        self._peers: dict[int, socket.socket] = {}
        self._lost: str | None = None
        self._closed = False
        self._lock = threading.Lock()
        threading.Thread(
            target=self._accept_loop, name="jaxembed-leader-accept", daemon=True
        ).start()

    def unhealthy_reason(self) -> str | None:
        with self._lock:
            if self._lost:
                return self._lost
            if len(self._peers) < self.expected:
                return f"waiting for followers ({len(self._peers)}/{self.expected} connected)"
            return None

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                conn, peer = self._server.accept()
            except OSError:
                return
            try:
                conn.settimeout(self.heartbeat_timeout)
                magic, process_id = _HELLO.unpack(_recv_exactly(conn, _HELLO.size))
                if magic != b"JXEH":
                    raise ConnectionError("bad hello")
            except (OSError, ConnectionError, struct.error) as e:
                log.warning("rejected a connection from %s: %s", peer, e)
                conn.close()
                continue
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                if process_id in self._peers or len(self._peers) >= self.expected:
                    log.warning("rejected a second connection for process %d", process_id)
                    conn.close()
                    continue
                self._peers[process_id] = conn
                connected = len(self._peers)
            log.info("follower %d connected (%d/%d)", process_id, connected, self.expected)
            threading.Thread(
                target=self._watch,
                args=(process_id, conn),
                name=f"jaxembed-watch-{process_id}",
                daemon=True,
            ).start()

    def _watch(self, process_id: int, conn: socket.socket) -> None:
        """Heartbeats from one follower; EOF or silence marks the whole group unhealthy."""
        while not self._closed:
            try:
                if not conn.recv(64):
                    reason = f"follower process {process_id} disconnected"
                    break
            except TimeoutError:
                reason = f"follower process {process_id} sent no heartbeat for {self.heartbeat_timeout:.0f} s"
                break
            except OSError as e:
                reason = f"follower process {process_id} connection failed: {e}"
                break
        else:
            return
        self._mark_lost(reason)

    def _mark_lost(self, reason: str) -> None:
        with self._lock:
            if self._lost is None and not self._closed:
                self._lost = reason
                log.error("%s: not ready; restart the group to recover", reason)

    def broadcast(self, input_ids: np.ndarray, second: np.ndarray, *, packed: bool = False) -> None:
        """Send one batch: ids and the attention mask, or ids and segment ids (`packed`)."""
        reason = self.unhealthy_reason()
        if reason:
            raise EngineUnavailableError(f"the model group is not available: {reason}")
        header = _HEADER.pack(_PACKED if packed else _RUN, *input_ids.shape)
        payload = header + input_ids.astype(np.int32).tobytes() + second.astype(np.int32).tobytes()
        for process_id, conn in list(self._peers.items()):
            try:
                conn.sendall(payload)
            except OSError as e:
                self._mark_lost(f"follower process {process_id} unreachable: {e}")
                raise EngineUnavailableError(
                    f"the model group is not available: follower {process_id} unreachable"
                ) from None

    def close(self) -> None:
        """Tell every follower to stop, then close the channel."""
        with self._lock:
            self._closed = True
            peers = list(self._peers.values())
        for conn in peers:
            try:
                conn.sendall(_HEADER.pack(_STOP, 0, 0))
                conn.close()
            except OSError:
                pass
        self._server.close()


def connect_to_leader(
    address: tuple[str, int], process_id: int, *, timeout: float = 600.0
) -> socket.socket:
    """Connect (retrying while the leader starts) and introduce ourselves."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            sock = socket.create_connection(address, timeout=10)
            break
        except OSError as e:
            if time.monotonic() > deadline:
                raise ConnectionError(f"cannot reach the leader at {address}: {e}") from None
            time.sleep(0.5)
    sock.settimeout(None)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(_HELLO.pack(b"JXEH", process_id))
    return sock


def follow(execute: Execute, sock: socket.socket) -> int:
    """Run every batch the leader sends until STOP (returns 0) or the leader vanishes (1)."""
    stop = threading.Event()

    def heartbeat() -> None:
        while not stop.wait(HEARTBEAT_INTERVAL):
            try:
                sock.sendall(_BEAT)
            except OSError:
                return

    threading.Thread(target=heartbeat, name="jaxembed-heartbeat", daemon=True).start()
    steps = packed_steps = 0
    try:
        while True:
            try:
                op, batch, seq = _HEADER.unpack(_recv_exactly(sock, _HEADER.size))
            except (OSError, ConnectionError):
                log.error("the leader is gone after %d steps; exiting", steps)
                return 1
            if op == _STOP:
                log.info(
                    "the leader stopped after %d steps (%d packed); exiting", steps, packed_steps
                )
                return 0
            if op not in (_RUN, _PACKED):
                log.error("unknown message %r from the leader; exiting", op)
                return 1
            size = batch * seq * 4
            data = _recv_exactly(sock, 2 * size)
            ids = np.frombuffer(data[:size], np.int32).reshape(batch, seq)
            second = np.frombuffer(data[size:], np.int32).reshape(batch, seq)
            # Same program, same order as the leader; wait so work never piles up here.
            jax.block_until_ready(execute(ids, second, op == _PACKED))
            steps += 1
            packed_steps += op == _PACKED
    finally:
        stop.set()
        sock.close()
