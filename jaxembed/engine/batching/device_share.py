"""Fair turns on shared devices between batchers (several models, text and images).

Every batcher has its own queue, scheduler and dispatch thread; when they
share devices, each dispatch first takes a turn here. At most `max_inflight`
batches are on the devices at once (one running, one queued keeps them busy),
and a freed turn goes to the waiting batcher that has been charged the least
device time so far — start-time fair queueing with the cost of a batch
estimated from its owner's measured throughput. An owner that was idle joins at
the system's virtual time (the start of the batch granted last), so idleness
banks no credit, and a flood on one model delays another model's request by
at most the batches already on the device (start-time fair queueing, Goyal
et al. 1996).
"""

from __future__ import annotations

import itertools
import threading

# Seconds charged per token until an owner's throughput has been measured.
DEFAULT_SECONDS_PER_TOKEN = 1e-4


class DeviceShare:
    def __init__(self, max_inflight: int = 2):
        if max_inflight < 1:
            raise ValueError("max_inflight must be at least 1")
        self.max_inflight = max_inflight
        self._cond = threading.Condition()
        self._inflight = 0
        self._held: dict[str, int] = {}  # owner -> batches on the device
        self._charged: dict[str, float] = {}  # owner -> estimated device seconds granted
        self._waiting: dict[str, int] = {}  # owner -> arrival number of its waiting turn
        self._arrivals = itertools.count()
        self._virtual = 0.0  # start tag of the batch granted last

    def acquire(self, owner: str, seconds: float) -> None:
        """Block until `owner` may dispatch a batch estimated to take `seconds`."""
        with self._cond:
            if not self._held.get(owner) and owner not in self._waiting:
                self._join(owner)
            self._waiting[owner] = next(self._arrivals)
            while not (self._inflight < self.max_inflight and self._next() == owner):
                self._cond.wait()
            del self._waiting[owner]
            self._inflight += 1
            self._held[owner] = self._held.get(owner, 0) + 1
            self._virtual = self._charged[owner]  # this batch's start tag
            self._charged[owner] += seconds
            self._cond.notify_all()

    def release(self, owner: str) -> None:
        """The batch `owner` dispatched is off the device (done or failed)."""
        with self._cond:
            self._inflight -= 1
            self._held[owner] -= 1
            self._cond.notify_all()

    def charged(self) -> dict[str, float]:
        with self._cond:
            return dict(self._charged)

    def _join(self, owner: str) -> None:
        """An idle owner starts at the virtual time, never behind it (no banked credit)."""
        self._charged[owner] = max(self._charged.get(owner, 0.0), self._virtual)

    def _next(self) -> str:
        """The waiting owner whose next batch starts earliest (first come among equals)."""
        return min(self._waiting, key=lambda o: (self._charged[o], self._waiting[o]))
