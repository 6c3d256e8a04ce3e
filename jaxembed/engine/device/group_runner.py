"""The runner of a model spread over several processes (`--multihost global`).

The leader's `BroadcastingRunner` sends every batch — padded or packed — to the
followers before dispatching it locally, so every process launches the same
compiled program on the same arrays in the same order; each follower runs
`follow_leader`, which maps the leader's steps back onto its own local runner.
The transport (JAX's collectives, the coordination service's liveness) is
jaxembed/parallel/pod.py.

LoRA adapters: each process holds the same slot bank; an adapter loaded while serving is a
step of its own (the leader publishes the slot and the adapter's directory under the same
lock as batches, and writes its own bank; followers read the same directory into the same
slot at that point), and each padded batch carries its rows' slots. Images: the leader
publishes each stacked pixel batch (float32, bit for bit) and followers run it on their
vision tower; a vision-language model's batch goes as its programs' host arrays.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import jax
import numpy as np

from jaxembed.engine.batching.buckets import Bucket, BucketGrid
from jaxembed.engine.device.memory import BucketMemory
from jaxembed.engine.device.runner import BucketRunner, Runner
from jaxembed.lora import AdapterError, LoraAdapter, LoraBank, TaskAdapters
from jaxembed.parallel import pod


class PodMember(Protocol):
    """A served model's engines as a pod sees them (an EngineModel, which lives above this
    layer): its token runner and, where it has them, its image and vision-language engines."""

    runner: Runner
    images: Any  # ImageEngine | None: publishes through its `dispatch_guard`
    fused: Any  # QwenVLEngine | None: likewise


def lead(members: Sequence[PodMember], channel: pod.PodLeader) -> None:
    """Make every served model publish each step before dispatching it: token batches through
    a `BroadcastingRunner`, image and vision-language batches through their engines' dispatch
    guards, adapter loads through the bank's write guard (model = its index here, the same on
    every process)."""
    for index, member in enumerate(members):
        runner = member.runner = BroadcastingRunner(member.runner, channel, model=index)
        if member.images is not None:
            member.images.dispatch_guard = runner.step_guard(channel.broadcast_images)
        if member.fused is not None:
            member.fused.dispatch_guard = runner.step_guard(channel.broadcast_arrays)


class BroadcastingRunner:
    """The leader's runner: each batch goes to the followers, then to the local devices.

    The channel's lock makes (broadcast, dispatch) atomic across every model's runner, so
    batchers, their retry paths and several models can never enqueue programs in different
    orders on different hosts.
    """

    def __init__(self, runner: BucketRunner, channel: pod.PodLeader, model: int = 0):
        self._runner = runner
        self._channel = channel
        self._model = model  # this model's index among the served ones (the followers' too)
        self._lock = channel.lock  # one order for every model's steps
        self.mesh = runner.mesh
        if isinstance(runner.lora_bank, LoraBank):  # preloaded on every process alike
            runner.lora_bank.write_guard = self._adapter_step

    # The grid and packing are the local runner's (a memory fit or set_packing changes them).
    @property
    def grid(self) -> BucketGrid:
        return self._runner.grid

    @grid.setter
    def grid(self, grid: BucketGrid) -> None:
        self._runner.grid = grid

    def planning_grid(self) -> BucketGrid:
        return self._runner.planning_grid()  # the whole grid: a pod warms up before serving

    # Every process must plan one grid: the memory check covers every length at start-up.
    checks_memory_on_compile = False

    @property
    def packed(self) -> bool:
        return self._runner.packed

    @packed.setter
    def packed(self, on: bool) -> None:
        self._runner.packed = on

    @property
    def lora_bank(self) -> LoraBank | TaskAdapters | None:
        return self._runner.lora_bank

    @lora_bank.setter
    def lora_bank(self, bank: LoraBank | TaskAdapters | None) -> None:
        raise AdapterError(
            "on a --multihost global group, adapter slots are reserved before the group "
            "starts (--lora / --lora-root at start-up), the same on every process"
        )

    def step_guard(self, broadcast: Callable[..., None]):
        """A dispatch guard: the batch published, then dispatched here, under the lock that
        orders every model's steps."""

        @contextlib.contextmanager
        def guard(batch):
            with self._lock:
                broadcast(batch, model=self._model)
                yield

        return guard

    @contextlib.contextmanager
    def _adapter_step(self, slot: int, adapter: LoraAdapter):
        """An adapter written into `slot` while serving: published, then written here, under
        the lock that orders batches — every process writes it between the same two steps."""
        with self._lock:
            self._channel.publish_adapter(self._model, slot, adapter.path)
            yield

    @property
    def compile_seconds(self) -> float:
        return self._runner.compile_seconds

    @property
    def lazy_compiles(self) -> int:
        return self._runner.lazy_compiles

    @property
    def compile_log(self) -> list[tuple[Bucket, float]]:
        return self._runner.compile_log

    @property
    def attention_used(self) -> dict[int, str]:
        return self._runner.attention_used

    def warmup(
        self,
        progress: Callable[[int, int, Bucket], None] | None = None,
        max_len: int | None = None,
        background: bool = False,
    ) -> float:
        """All of the grid before ready: every process must run the same programs, so no
        batch may run in a stand-in bucket that only the leader has compiled."""
        return self._runner.warmup(progress, max_len)

    def memories(self, buckets: Sequence[Bucket]) -> list[BucketMemory]:
        return self._runner.memories(buckets)

    def memory(self, bucket: Bucket) -> BucketMemory:
        return self._runner.memory(bucket)

    def unhealthy_reason(self) -> str | None:
        return self._channel.unhealthy_reason()

    def run(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        adapter_ids: np.ndarray | None = None,
    ) -> jax.Array:
        if adapter_ids is not None and not adapter_ids.any():
            adapter_ids = None  # base rows only: the plain program, as on one process
        with self._lock:
            self._channel.broadcast(
                input_ids, attention_mask, model=self._model, adapter_ids=adapter_ids
            )
            return self._runner.run(input_ids, attention_mask, adapter_ids)

    def run_packed(self, input_ids: np.ndarray, segments: np.ndarray) -> jax.Array:
        with self._lock:
            self._channel.broadcast(input_ids, segments, packed=True, model=self._model)
            return self._runner.run_packed(input_ids, segments)


def follow_leader(members: Sequence[PodMember], *, liveness: pod.Liveness) -> int:
    """A follower: run the leader's steps on the served models' engines (in the leader's
    order) until it stops (0) or the group breaks (1)."""
    runners = [m.runner for m in members]
    images = [m.images for m in members]
    fused = [m.fused for m in members]

    def execute(
        ids: np.ndarray, second: np.ndarray, packed: bool, model: int, slots: np.ndarray | None
    ) -> jax.Array:
        runner = runners[model]
        return runner.run_packed(ids, second) if packed else runner.run(ids, second, slots)

    def run_images(model: int, pixels: np.ndarray) -> jax.Array:
        engine = images[model]
        if engine is None:
            raise RuntimeError(f"model {model} has no vision tower on this process")
        return engine.run_stacked(pixels.reshape(len(pixels), *engine.pixel_shape))

    def run_arrays(model: int, arrays: list) -> jax.Array:
        engine = fused[model]
        if engine is None:
            raise RuntimeError(f"model {model} is not a vision-language model on this process")
        return engine.run_arrays(arrays)

    def load_adapter(model: int, slot: int, path: str) -> None:
        bank = runners[model].lora_bank
        if not isinstance(bank, LoraBank):
            raise AdapterError(f"model {model} has no adapter slots on this process")
        bank.load_into(slot, path)

    handlers = pod.StepHandlers(execute, load_adapter, run_images, run_arrays)
    return pod.follow(handlers, liveness=liveness)
