"""What start-up says: where the server listens and when it is ready (with how much it
compiled and how long it took), so a log reader never has to infer either."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable

from jaxembed.engine.service.embedding import EmbeddingService

log = logging.getLogger("jaxembed.server")
_started = time.monotonic()  # re-marked by `serve`; import time is a fair fallback


def mark_started() -> None:
    global _started
    _started = time.monotonic()


def url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def log_listening(host: str, port: int, detail: str = "") -> None:
    log.info("listening on %s%s", url(host, port), detail)


async def log_when_ready(services: Iterable[EmbeddingService], warmup: bool) -> None:
    """Says "ready: N models, M buckets in S s" once every model answers /ready (its ready
    set of buckets compiled; the rest of the grid goes on compiling in the background, and no
    request waits for it)."""
    services = list(services)
    statuses = [service.status() for service in services]
    while not all(status.warm for status in statuses):
        await asyncio.sleep(0.05)
        statuses = [service.status() for service in services]
    programs = sum(status.programs for status in statuses)
    log.info(
        "ready: %d model%s, %d bucket%s compiled in %.1f s%s",
        len(statuses),
        "" if len(statuses) == 1 else "s",
        programs,
        "" if programs == 1 else "s",
        time.monotonic() - _started,
        "" if warmup else " (warm-up off: buckets compile on first use)",
    )
