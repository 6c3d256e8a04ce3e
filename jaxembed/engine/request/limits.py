"""How much work may wait per model and how it is scheduled: one place for every default,
read by the engine, the server's options and their documentation."""

from __future__ import annotations

import dataclasses

from jaxembed.errors import RequestTooLargeError

DEFAULT_MAX_QUEUED_REQUESTS = 1024
DEFAULT_MAX_QUEUED_TOKENS = 4 * 2**20
DEFAULT_AGING_SECONDS = 1.0
DEFAULT_STEP_BATCHES = 8


@dataclasses.dataclass(frozen=True)
class QueueLimits:
    """Per batcher: the most requests and tokens waiting (more is a 503), how fast a waiting
    request's priority improves, and how many token budgets one device step may hold
    (engine/batching/scheduler.py)."""

    max_queued_requests: int = DEFAULT_MAX_QUEUED_REQUESTS
    max_queued_tokens: int = DEFAULT_MAX_QUEUED_TOKENS
    aging_seconds: float = DEFAULT_AGING_SECONDS
    step_batches: int = DEFAULT_STEP_BATCHES

    @classmethod
    def unbounded(cls) -> QueueLimits:
        """The Python API's: a caller's own list is never refused for its size."""
        return cls(max_queued_requests=2**62, max_queued_tokens=2**62)


def check_request_tokens(tokens: int, limit: int | None, *, inputs: int | None = None) -> None:
    """A request's tokens (all its inputs, windows included) within --max-request-tokens;
    `inputs`: the tokens are those of the request's first `inputs` inputs so far (a request
    tokenised in slices is refused as soon as it is over)."""
    if limit is None or tokens <= limit:
        return
    counted = (
        f"the request has {tokens} tokens"
        if inputs is None
        else (f"the request's first {inputs} inputs have {tokens} tokens")
    )
    raise RequestTooLargeError(f"{counted}; the maximum per request is {limit}")
