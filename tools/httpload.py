"""A lean HTTP/1.1 load client for loopback benchmarks: keep-alive connections, prebuilt
request bytes, Content-Length framing only — so the client costs far less than the server
it measures (httpx costs ~10x more per request, which caps what a 2-core machine can show).

    stats = asyncio.run(drive("127.0.0.1", port, bodies, concurrency=64, check=fn))

Every response is handed to `check(index, status, body_bytes)`, which raises on a wrong
answer; loopback only, bounded by the number of bodies and a deadline.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Sequence

import numpy as np

Check = Callable[[int, int, bytes], None]


@dataclasses.dataclass
class LoadStats:
    requests: int
    seconds: float
    latencies: list[float]

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(np.asarray(self.latencies), q) * 1e3) if self.latencies else 0.0

    def summary(self) -> dict:
        return {
            "requests": self.requests,
            "seconds": round(self.seconds, 3),
            "per_s": round(self.per_second, 1),
            "p50_ms": round(self.percentile_ms(50), 2),
            "p99_ms": round(self.percentile_ms(99), 2),
        }


def request_bytes(host: str, port: int, path: str, body: bytes) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = 0
    for line in lines[1:]:
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    return status, await reader.readexactly(length)


async def drive(
    host: str,
    port: int,
    bodies: Sequence[bytes],
    *,
    concurrency: int,
    check: Check | None = None,
    path: str = "/v1/embeddings",
    timeout: float = 600.0,
) -> LoadStats:
    """Send every body once over `concurrency` keep-alive connections; latencies per request."""
    requests = [request_bytes(host, port, path, b) for b in bodies]
    next_index = iter(range(len(requests)))
    latencies: list[float] = []
    deadline = time.monotonic() + timeout

    async def client() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            for i in next_index:
                if time.monotonic() > deadline:
                    raise TimeoutError("load run exceeded its deadline")
                start = time.perf_counter()
                writer.write(requests[i])
                status, body = await _read_response(reader)
                latencies.append(time.perf_counter() - start)
                if check is not None:
                    check(i, status, body)
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(min(concurrency, len(requests)))))
    return LoadStats(len(latencies), time.perf_counter() - start, latencies)
