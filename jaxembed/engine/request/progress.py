"""How far a request got: counters the engine writes from its threads and the edges
(timeouts, tracing) read. No JAX, no engine imports."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator


class RequestProgress:
    """Rows of a request that the device finished (a timed-out request reports them), and the
    phases it went through — (name, start, end) in `time.time_ns()` — for tracing.

    Written from the event loop (cache hits) and the engine's threads (finished rows), so
    the count is kept under a lock.
    """

    def __init__(self) -> None:
        self._rows_done = 0
        self._lock = threading.Lock()
        self.phases: list[tuple[str, int, int]] = []

    @property
    def rows_done(self) -> int:
        return self._rows_done

    def add_rows(self, count: int) -> None:
        with self._lock:
            self._rows_done += count

    def phase(self, name: str, start_ns: int, end_ns: int) -> None:
        self.phases.append((name, start_ns, end_ns))  # list.append: safe from any thread

    @contextlib.contextmanager
    def timed(self, name: str) -> Iterator[None]:
        start = time.time_ns()
        try:
            yield
        finally:
            self.phase(name, start, time.time_ns())
