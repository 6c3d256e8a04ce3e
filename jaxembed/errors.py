"""Typed errors of the library.

The HTTP layer maps each class to a status code once (`server/errors.py`), so
every message here is written for the person who sent the input: it says what
was wrong and what the limit is, never a stack trace or a host path they did
not give us.
"""

from __future__ import annotations


class JaxEmbedError(Exception):
    """Base class of every error jaxembed raises on purpose."""


class ModelLoadError(JaxEmbedError):
    """A model directory, card or checkpoint cannot be loaded."""


class UnsupportedArchitectureError(ModelLoadError):
    """The checkpoint's architecture is not one jaxembed implements."""


class WeightMismatchError(ModelLoadError):
    """Tensors are missing, unexpected, or of the wrong shape for the architecture."""


class InvalidInputError(JaxEmbedError, ValueError):
    """An input cannot be embedded as given (empty text, bad token ids, ...).

    `index` is the position of the offending item in the caller's input list,
    so that an error in a batch of 1,000 texts points at the right one.
    """

    def __init__(
        self,
        message: str,
        *,
        index: int | None = None,
        param: str = "input",
        code: str | None = None,
    ):
        super().__init__(message)
        self.index = index
        self.param = param
        self.code = code


class MediaError(InvalidInputError):
    """An image or video cannot be used: not fetched, too large, not decodable, not allowed.

    `code` names the kind of failure (e.g. `media_too_large`) for clients and metrics.
    """

    def __init__(self, message: str, *, code: str = "invalid_media", index: int | None = None):
        super().__init__(message, index=index, code=code)


class InputTooLongError(InvalidInputError):
    """An input has more tokens than the model accepts and truncation was not requested."""

    def __init__(self, index: int, num_tokens: int, max_tokens: int, *, chunked: bool = False):
        if chunked:
            message = (
                f"input[{index}] has {num_tokens} tokens, more than the {max_tokens} one chunked "
                "input may have (the server's --max-embed-len); split it or send truncate=true "
                "without chunking"
            )
        else:
            message = (
                f"input[{index}] has {num_tokens} tokens, more than this model's maximum of "
                f"{max_tokens}; shorten it, send truncate=true (keep the first tokens) or "
                "chunking=true (embed it in windows and pool them)"
            )
        super().__init__(message, index=index)
        self.num_tokens = num_tokens
        self.max_tokens = max_tokens


class AdapterError(InvalidInputError):
    """An adapter cannot be used: unknown, outside the root, malformed, or unfit for the model."""

    def __init__(self, message: str, param: str = "lora_path"):
        super().__init__(message, param=param)


class RequestTooLargeError(InvalidInputError):
    """A request holds more than a limit allows in one request (e.g. tokens); split it."""

    def __init__(self, message: str, *, param: str = "input"):
        super().__init__(message, param=param, code="request_too_large")


class DeadlineError(JaxEmbedError):
    """A job cannot finish by its deadline even with the device to itself, at the
    throughput measured so far: refused before it takes any device time."""

    def __init__(self, tokens: int, expected_seconds: float, seconds_left: float):
        super().__init__(
            f"{tokens} uncached tokens would take about {expected_seconds:.0f} s, "
            f"more than the {max(seconds_left, 0):.0f} s left"
        )
        self.tokens = tokens
        self.expected_seconds = expected_seconds
        self.seconds_left = seconds_left


class EngineError(JaxEmbedError):
    """The device computation of a batch failed; only that batch's requests are affected."""


class DeviceMemoryError(EngineError):
    """A bucket's program needs more device memory than the start-up plan allows: found as
    it compiled (a length the memory check left to the background, or beyond warm-up), so
    its batch is retried in smaller buckets, as for an out-of-memory error from XLA."""


class OverloadedError(JaxEmbedError):
    """The queue is full (or the server is draining); the client should retry later."""

    def __init__(self, message: str, *, retry_after: float = 1.0):
        super().__init__(message)
        self.retry_after = retry_after


class EngineUnavailableError(JaxEmbedError):
    """The engine cannot run batches now (e.g. a process of a multi-host group is gone)."""

    def __init__(self, message: str, *, retry_after: float = 5.0):
        super().__init__(message)
        self.retry_after = retry_after
