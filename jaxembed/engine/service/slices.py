"""A large text request in slices, so that tokenising and the device overlap inside it.

Tokenising a request's texts and running them are two stages on different hardware (the
Rust tokenizer's threads; the accelerator). A request of 10,000 texts tokenised in one call
leaves the device idle until the last text is encoded, then leaves the tokenizer idle while
the device works. In slices of `SLICE_TEXTS`, the next slice is tokenised while the last
one runs; at most `IN_FLIGHT` slices are on the device side at once, so one large request
never holds many jobs in the scheduler's fair turns. Small requests (most traffic) take the
one-call path; the vectors are the same either way (rows are independent).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

import numpy as np

from jaxembed.engine.request.limits import check_request_tokens
from jaxembed.errors import InputTooLongError

SLICE_TEXTS = 1024
IN_FLIGHT = 2

Tokenize = Callable[[list[str]], Awaitable[list[np.ndarray]]]
EmbedRows = Callable[[list[np.ndarray]], Awaitable[np.ndarray]]


def sliced(texts: Sequence[str]) -> bool:
    """Whether a request is large enough for slices to pay (at least two of them)."""
    return len(texts) >= 2 * SLICE_TEXTS


async def embed_in_slices(
    texts: list[str],
    tokenize: Tokenize,
    embed_rows: EmbedRows,
    max_request_tokens: int | None,
) -> tuple[np.ndarray, list[int]]:
    """(vectors, tokens per text) of checked `texts`, slice by slice; errors name inputs by
    their place in the whole request, and the request's token limit counts every slice."""
    room = asyncio.Semaphore(IN_FLIGHT)
    running: list[asyncio.Future] = []
    counts: list[int] = []

    async def run(rows: list[np.ndarray]) -> np.ndarray:
        try:
            return await embed_rows(rows)
        finally:
            room.release()

    try:
        for start in range(0, len(texts), SLICE_TEXTS):
            await room.acquire()
            try:
                rows = await tokenize(texts[start : start + SLICE_TEXTS])
            except InputTooLongError as e:  # its index is the slice's: make it the request's
                raise InputTooLongError(e.index + start, e.num_tokens, e.max_tokens) from None
            counts += map(len, rows)
            check_request_tokens(sum(counts), max_request_tokens, inputs=len(counts))
            running.append(asyncio.ensure_future(run(rows)))
        return np.concatenate(await asyncio.gather(*running)), counts
    except BaseException:
        for task in running:
            task.cancel()
        raise
