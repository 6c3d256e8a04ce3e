"""One model over several processes, on JAX's own distributed runtime.

With a mesh spanning hosts, every process must launch the same compiled program on the same
inputs in the same order. Process 0 (the leader) owns HTTP and the batcher; the others follow.
Nothing here opens a socket: steps and liveness travel through the
coordination service that `jax.distributed.initialize` started.

* **Steps.** Before the leader dispatches a batch it publishes the step — a fixed-size header
  (what to run: padded or packed, the batch's shape) and the batch's int32 arrays — in the
  coordination service's key-value store under the step's number; each follower waits for
  that key, runs the same bucket program (`follow`), and the step's own collectives (gloo on
  CPU, NCCL on GPU, ICI/DCN on TPU) line up. A sender thread publishes in order, so the
  leader's dispatch never waits on the store, and deletes what every follower has read (a
  step's collectives keep followers within a step or two of the leader). Measured against
  `multihost_utils.broadcast_one_to_all` of the same header and arrays (docs/benchmarks.md):
  a device collective per step waits behind each process's previous step, which serialises
  the pod; the store does not.
* **Other steps.** A LoRA adapter loaded while serving is a step (ADAPTER: model, slot and
  the adapter's directory: every process reads it into the same slot at that point); padded
  batches with adapters carry each row's slot after their two arrays; an image batch is a RUN step
  of kind IMAGES whose body is the float32 pixels, bit for bit; a vision-language batch is
  one of kind ARRAYS: its programs' host arrays with a manifest of dtypes and shapes.
* **Liveness.** Every process runs a thread that calls the coordination service's
  `get_live_nodes` in rounds (a barrier among the live processes: it returns once each has
  called, and the service drops a process whose heartbeats stopped for the heartbeat timeout).
  The leader marks the group lost when a follower is missing from a round, or when a round
  takes longer than the timeout (a follower that is alive but stuck): `/ready` turns 503 and
  new batches fail fast with `EngineUnavailableError` instead of waiting in a collective that
  can never complete. Recoverability is enabled before joining (`distributed.initialize`), so
  a follower's death does not take the leader down; the leader's death takes the service with
  it, and each follower's agent then ends its process (non-zero).
* **Stop.** The leader's last header says STOP; followers return 0.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from jaxembed.errors import EngineUnavailableError

log = logging.getLogger("jaxembed.pod")

HEADER_SIZE = 8  # int32 words, at these positions (the last one reserved):
_OP, _KIND, _BATCH, _SEQ, _STEP, _CHUNKS, _MODEL = range(7)
_RUN, _STOP, _ADAPTER = 1, 2, 3
_PADDED, _PACKED, _PADDED_LORA, _IMAGES, _ARRAYS = 0, 1, 2, 3, 4  # kinds of a RUN step
_DTYPES = {1: np.dtype(np.int32), 2: np.dtype(np.float32)}  # an ARRAYS step's (0: None)

LIVENESS_INTERVAL = 0.1  # seconds between rounds of get_live_nodes
STEPS = "jaxembed/steps"  # the store's directory of published steps
KEEP_STEPS = 32  # steps kept in the store (followers are never more than a few behind)
CHUNK_BYTES = 1 << 20  # one value per MiB (gRPC's message limit is 4 MiB)
_WAIT_MS = 1000  # a follower's wait for the next step, in slices (to notice a broken group)


@dataclasses.dataclass(frozen=True)
class StepHandlers:
    """What a follower does with each kind of step; each RUN handler returns the device
    result without waiting."""

    # (ids, mask or segment ids, packed, model, each row's adapter slot or None)
    tokens: Callable[[np.ndarray, np.ndarray, bool, int, np.ndarray | None], Any]
    # (model, slot, the adapter's directory)
    load_adapter: Callable[[int, int, str], None]
    # (model, [batch, ...] float32 pixels)
    images: Callable[[int, np.ndarray], Any]
    # (model, a vision-language batch's host arrays)
    arrays: Callable[[int, list], Any]

    def run(self, kind: int, batch: int, seq: int, model: int, body: bytes) -> Any:
        """Dispatch one RUN step's batch."""
        if kind == _IMAGES:
            return self.images(model, np.frombuffer(body, np.float32).reshape(batch, -1))
        if kind == _ARRAYS:
            return self.arrays(model, unpack_arrays(np.frombuffer(body, np.int32)))
        words = np.frombuffer(body, np.int32)
        arrays = words[: 2 * batch * seq].reshape(2, batch, seq)
        slots = words[2 * batch * seq :] if kind == _PADDED_LORA else None
        return self.tokens(arrays[0], arrays[1], kind == _PACKED, model, slots)


def pack_arrays(arrays: list[np.ndarray | None]) -> np.ndarray:
    """int32 and float32 arrays (or None) of any shapes as one int32 body: a manifest (count,
    then per array its dtype code, rank and shape), then every array's bytes in order."""
    codes = {dtype: code for code, dtype in _DTYPES.items()}
    manifest, data = [len(arrays)], []
    for array in arrays:
        if array is None:
            manifest += [0, 0]
            continue
        array = np.asarray(array, order="C")  # (ascontiguousarray would make 0-d arrays 1-d)
        manifest += [codes[array.dtype], array.ndim, *array.shape]
        data.append(array.reshape(-1).view(np.int32))
    return np.concatenate([np.asarray(manifest, np.int32), *data])


def unpack_arrays(body: np.ndarray) -> list[np.ndarray | None]:
    """`pack_arrays`' arrays back, bit for bit."""
    count, at, shapes = int(body[0]), 1, []
    for _ in range(count):
        code, rank = int(body[at]), int(body[at + 1])
        shapes.append((code, tuple(int(d) for d in body[at + 2 : at + 2 + rank])))
        at += 2 + rank
    out = []
    for code, shape in shapes:
        if code == 0:
            out.append(None)
            continue
        size = int(np.prod(shape))
        out.append(body[at : at + size].view(_DTYPES[code]).reshape(shape).copy())
        at += size
    return out


def _key(step: int, chunk: int = 0) -> str:
    return f"{STEPS}/{step}/{chunk}"


def _encode(step: int, op: int, arrays: np.ndarray | None = None, **fields: int) -> list[bytes]:
    """A step as store values: its header (op, step number, chunk count and `fields` at
    their positions: kind, batch, seq, model) with the first chunk of the arrays' bytes, then
    the other chunks."""
    body = b"" if arrays is None else np.ascontiguousarray(arrays, np.int32).tobytes()
    chunks = [body[i : i + CHUNK_BYTES] for i in range(0, len(body), CHUNK_BYTES)] or [b""]
    header = np.zeros(HEADER_SIZE, np.int32)
    header[[_OP, _STEP, _CHUNKS]] = (op, step, len(chunks))
    positions = {"kind": _KIND, "batch": _BATCH, "seq": _SEQ, "model": _MODEL}
    for name, value in fields.items():
        header[positions[name]] = value
    return [header.tobytes() + chunks[0], *chunks[1:]]


def _client():
    from jax._src import distributed

    client = distributed.global_state.client
    if client is None:
        raise RuntimeError("jax.distributed is not initialised")
    return client


class Liveness:
    """Rounds of the coordination service's `get_live_nodes` on a thread of every process."""

    def __init__(self, timeout: float):
        self.timeout = timeout
        self.processes = list(range(jax.process_count()))
        self.me = jax.process_index()
        self._lost: str | None = None
        self._round_started: float | None = None
        self._stop = threading.Event()
        self._leaving = threading.Event()  # the leader's last rounds: until it is alone
        self._alone = threading.Event()
        self._thread = threading.Thread(target=self._rounds, name="jaxembed-liveness", daemon=True)
        self._thread.start()

    def _rounds(self) -> None:
        client = _client()
        while not self._stop.is_set():
            self._round_started = time.monotonic()
            try:
                live = set(client.get_live_nodes(self.processes))
            except Exception as e:  # the service itself is gone (the leader died)
                self._lost = f"the coordination service is unreachable ({type(e).__name__})"
                return
            self._round_started = None
            if self._leaving.is_set():
                if live <= {self.me}:
                    self._alone.set()
                    return
                continue
            missing = sorted(set(self.processes) - live)
            if missing:
                self._lost = f"process(es) {missing} stopped answering the coordination service"
                log.error("%s: not ready; restart the group to recover", self._lost)
                return
            self._stop.wait(LIVENESS_INTERVAL)

    def lost_reason(self) -> str | None:
        if self._lost is not None:
            return self._lost
        started = self._round_started
        if started is not None and time.monotonic() - started > self.timeout:
            waited = time.monotonic() - started
            return f"a process has not answered the liveness round for {waited:.1f} s"
        return None

    def close(self) -> None:
        self._stop.set()

    def wait_until_alone(self, timeout: float) -> bool:
        """Keep answering rounds until every other process has left the service (followers
        disconnect from it as they exit: the service, which lives in the leader, must outlast
        them, or their agents abort). False if some process is still there after `timeout`."""
        self._leaving.set()
        return self._alone.wait(timeout)


class StepSender:
    """The leader's publisher: steps into the store in order on its own thread."""

    def __init__(self):
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self.failed: str | None = None
        self._thread = threading.Thread(target=self._send, name="jaxembed-steps", daemon=True)
        self._thread.start()

    def put(self, step: int, values: list[bytes]) -> None:
        self._queue.put((step, values))

    def _send(self) -> None:
        client = _client()
        while (item := self._queue.get()) is not None:
            step, values = item
            try:
                for chunk in range(len(values) - 1, -1, -1):  # the header's value last
                    client.key_value_set_bytes(_key(step, chunk), values[chunk])
                if step >= KEEP_STEPS:
                    client.key_value_delete(f"{STEPS}/{step - KEEP_STEPS}")
            except Exception as e:  # the service is gone
                self.failed = f"publishing step {step} failed ({type(e).__name__})"
                log.error("%s", self.failed)
                return

    def close(self) -> None:
        """Publish what is queued, then stop."""
        self._queue.put(None)
        self._thread.join(timeout=30)


class PodLeader:
    """The leader's side: publishes each step; knows the group's health."""

    def __init__(self, *, heartbeat_timeout: float):
        self.liveness = Liveness(heartbeat_timeout)
        self.sender = StepSender()
        self.steps = 0
        # Held by every model's runner around (publish, dispatch): the leader's devices then
        # run the steps of all its models in the order the followers read them.
        self.lock = threading.Lock()

    def unhealthy_reason(self) -> str | None:
        return self.sender.failed or self.liveness.lost_reason()

    def _publish(self, op: int, arrays: np.ndarray | None = None, **fields: int) -> None:
        self.sender.put(self.steps, _encode(self.steps, op, arrays, **fields))
        self.steps += 1

    def _check(self) -> None:
        if reason := self.unhealthy_reason():
            raise EngineUnavailableError(f"the model group is not available: {reason}")

    def broadcast(
        self,
        input_ids: np.ndarray,
        second: np.ndarray,
        *,
        packed: bool = False,
        model: int = 0,
        adapter_ids: np.ndarray | None = None,
    ) -> None:
        """Send one batch of model `model` (its index among the served models): ids and the
        attention mask, or ids and segment ids (`packed`); `adapter_ids`: each row's LoRA
        slot (padded batches), after the two arrays."""
        self._check()
        batch, seq = input_ids.shape
        kind = _PACKED if packed else _PADDED
        body = [input_ids.ravel(), second.ravel()]
        if adapter_ids is not None:
            kind = _PADDED_LORA
            body.append(np.asarray(adapter_ids, np.int32))
        self._publish(_RUN, np.concatenate(body), kind=kind, batch=batch, seq=seq, model=model)

    def broadcast_images(self, pixels: np.ndarray, *, model: int = 0) -> None:
        """Send one batch of preprocessed images ([batch, ...] float32, bit for bit)."""
        self._check()
        body = np.ascontiguousarray(pixels, np.float32).view(np.int32)
        self._publish(_RUN, body, kind=_IMAGES, batch=len(pixels), model=model)

    def broadcast_arrays(self, arrays: list[np.ndarray | None], *, model: int = 0) -> None:
        """Send one batch as its program's host arrays (`pack_arrays`)."""
        self._check()
        self._publish(_RUN, pack_arrays(arrays), kind=_ARRAYS, model=model)

    def publish_adapter(self, model: int, slot: int, path: str) -> None:
        """Every process loads the adapter at `path` into `slot` of model `model` at this
        point between batches (the path must be readable on every host)."""
        self._check()
        data = path.encode()
        words = np.frombuffer(data.ljust(-(-len(data) // 4) * 4, b"\0"), np.int32)
        self._publish(_ADAPTER, words, batch=slot, seq=len(data), model=model)

    def close(self, leave_timeout: float = 10.0) -> None:
        """Tell every follower to stop and wait until they have left (unless the group is
        already broken: then nobody is waited for)."""
        if self.unhealthy_reason() is None:
            self._publish(_STOP)
            self.sender.close()
            if not self.liveness.wait_until_alone(leave_timeout):
                log.warning("followers still connected %.0f s after STOP", leave_timeout)
        self.liveness.close()


def _next_step(client, step: int, liveness: Liveness) -> tuple[np.ndarray, bytes]:
    """Step `step`'s header and body, waiting for the leader to publish it."""
    while True:
        try:
            first = client.blocking_key_value_get_bytes(_key(step), _WAIT_MS)
            break
        except Exception as e:
            if "DEADLINE_EXCEEDED" not in str(e) and "timed out" not in str(e).lower():
                raise
            if reason := liveness.lost_reason():
                raise RuntimeError(reason) from None
    header = np.frombuffer(first[: HEADER_SIZE * 4], np.int32)
    rest = [
        client.blocking_key_value_get_bytes(_key(step, k), _WAIT_MS)
        for k in range(1, int(header[_CHUNKS]))
    ]
    return header, b"".join([first[HEADER_SIZE * 4 :], *rest])


def follow(handlers: StepHandlers, *, liveness: Liveness) -> int:
    """Run every batch the leader sends until STOP (returns 0) or the group breaks (1).

    `liveness`: this process's rounds, started before its warm-up — the leader may be ready
    (and count this process in its rounds) while this one still compiles."""
    client = _client()
    steps = packed_steps = 0
    pending = None  # the previous step's result: one step runs while the next is fetched
    try:
        while True:
            try:
                header, body = _next_step(client, steps, liveness)
            except Exception as e:  # the service is gone with the leader
                log.error("the group broke after %d steps (%s); exiting", steps, e)
                return 1
            op, kind, batch, seq, model = (
                int(header[i]) for i in (_OP, _KIND, _BATCH, _SEQ, _MODEL)
            )
            if op == _STOP:
                log.info(
                    "the leader stopped after %d steps (%d packed); exiting", steps, packed_steps
                )
                return 0
            if op == _ADAPTER:
                path = body[:seq].decode()
                try:
                    handlers.load_adapter(model, batch, path)
                except Exception as e:  # this host would now compute other vectors: leave
                    log.error("cannot load adapter %s as the leader did (%s); exiting", path, e)
                    return 1
                steps += 1
                continue
            if op != _RUN:
                log.error("unknown step header %s from the leader; exiting", header.tolist())
                return 1
            result = handlers.run(kind, batch, seq, model, body)
            if pending is not None:
                jax.block_until_ready(pending)  # work never piles up here
            pending = result
            steps += 1
            packed_steps += kind == _PACKED
    finally:
        liveness.close()
