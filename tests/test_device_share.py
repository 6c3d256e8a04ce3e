"""Fair turns between batchers on shared devices (jaxembed/engine/batching/device_share.py)."""

from __future__ import annotations

import threading
import time

import pytest

from jaxembed.engine.batching.device_share import DeviceShare


def _waiter(share: DeviceShare, owner: str, seconds: float, order: list[str]) -> threading.Thread:
    def run() -> None:
        share.acquire(owner, seconds)
        order.append(owner)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _wait_for_waiters(share: DeviceShare, count: int) -> None:
    deadline = time.monotonic() + 10
    while len(share._waiting) < count:
        assert time.monotonic() < deadline
        time.sleep(0.001)


def test_a_newcomer_goes_before_the_owner_that_has_used_the_device():
    share = DeviceShare(max_inflight=1)
    for _ in range(50):  # a flood has been served a lot
        share.acquire("flood", 1.0)
        share.release("flood")
    share.acquire("flood", 1.0)  # ... and holds the device now
    order: list[str] = []
    threads = [_waiter(share, "flood", 1.0, order)]
    _wait_for_waiters(share, 1)
    threads.append(_waiter(share, "query", 0.01, order))
    _wait_for_waiters(share, 2)
    share.release("flood")
    deadline = time.monotonic() + 10
    while len(order) < 1:
        assert time.monotonic() < deadline
        time.sleep(0.001)
    assert order == ["query"]  # the flood waits although it asked first
    share.release("query")
    for t in threads:
        t.join(timeout=10)
    assert order == ["query", "flood"]


def test_idle_owners_bank_no_credit():
    """An owner idle while another worked joins at the virtual time, not at zero: it then
    alternates with the busy one instead of monopolising the device."""
    share = DeviceShare(max_inflight=1)
    for _ in range(100):
        share.acquire("busy", 1.0)
        share.release("busy")
    share.acquire("busy", 1.0)  # busy is active; "late" joins now
    order: list[str] = []
    late = _waiter(share, "late", 1.0, order)
    _wait_for_waiters(share, 1)
    assert share.charged()["late"] == pytest.approx(100.0)  # busy's last start, not 0
    share.release("busy")
    late.join(timeout=10)
    share.release("late")


def test_at_most_max_inflight_batches_and_every_release_frees_a_turn():
    share = DeviceShare(max_inflight=2)
    share.acquire("a", 1.0)
    share.acquire("b", 1.0)
    order: list[str] = []
    blocked = _waiter(share, "c", 1.0, order)
    _wait_for_waiters(share, 1)
    assert order == []
    share.release("a")
    blocked.join(timeout=10)
    assert order == ["c"]
    with pytest.raises(ValueError):
        DeviceShare(max_inflight=0)
