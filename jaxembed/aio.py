"""asyncio helpers: all-or-nothing gathering, and a loop on a thread for synchronous callers.

`Embedder.embed` is a plain function, yet it runs the same async
`EmbeddingService` as the server. `asyncio.run` would fail inside an already
running loop (Jupyter, an async web app calling the library); submitting to a
loop of our own (`BackgroundLoop`) works everywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Coroutine, Iterable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


async def gather_or_cancel(awaitables: Iterable[Awaitable[Any]]) -> list[Any]:
    """Results of all awaitables, concurrently; the first failure cancels the others (a bad
    item of a request stops its siblings' fetching and decoding) and is raised."""
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        raise


class BackgroundLoop:
    def __init__(self, name: str = "jaxembed-loop"):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the background loop and wait for its result (or its exception)."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("BackgroundLoop.run called from its own loop (it would deadlock)")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        self.loop.close()


Resolution = tuple[asyncio.AbstractEventLoop, asyncio.Future, Any, BaseException | None]


def resolve_on_loops(items: Sequence[Resolution]) -> None:
    """Resolve futures from a worker thread: one call into each event loop however many
    futures (a batch's requests are handed back together, not one by one)."""
    by_loop: dict[asyncio.AbstractEventLoop, list] = {}
    for loop, future, value, error in items:
        by_loop.setdefault(loop, []).append((future, value, error))
    for loop, entries in by_loop.items():
        with contextlib.suppress(RuntimeError):  # a closed loop: its caller is gone
            loop.call_soon_threadsafe(_resolve_all, entries)


def _resolve_all(entries: list) -> None:
    for future, value, error in entries:
        if future.done():  # the caller went away
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)
