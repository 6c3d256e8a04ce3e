"""One exception type for the HTTP layer and the single mapping from library errors to it.

Every error leaves the server as `{"error": {"message", "type", "param",
"code"}}` with a 4xx/5xx status; messages never carry stack traces or paths.
"""

from __future__ import annotations

import math

from pydantic import ValidationError

from jaxembed.errors import (
    EngineError,
    EngineUnavailableError,
    InputTooLongError,
    InvalidInputError,
    JaxEmbedError,
    OverloadedError,
    RequestTooLargeError,
)


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}
        # What went wrong, for peer APIs that answer each kind with its own status
        # (never sent): "invalid_json", "invalid_fields".
        self.reason: str | None = None

    def body(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def invalid(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def from_validation_error(error: ValidationError) -> APIError:
    """The first pydantic problem, phrased for a client, with the JSON path as `param`."""
    first = error.errors()[0]
    loc = [str(x) for x in first.get("loc", ()) if not str(x).startswith(("list[", "str", "int"))]
    param = ".".join(loc) if loc else None
    message = first.get("msg", "invalid request")
    if loc and loc[0] == "input" and first.get("type") != "missing":
        if message := _input_element_problem(error.errors()):
            return invalid(message, param="input")
        return invalid(
            "'input' must be a string, a list of strings, a list of token ids, a list of token-id "
            "lists, or a list of multimodal items ({text, image, video})",
            param="input",
        )
    if first.get("type") == "missing":
        message = f"'{param}' is required"
    elif param:
        message = f"invalid '{param}': {message}"
    return invalid(message, param=param.split(".")[0] if param else None)


_KINDS = {str: "a string", int: "a token id", list: "a list of token ids", dict: "an item"}


def _kind(value: object) -> type | None:
    return next((k for k in _KINDS if isinstance(value, k) and not isinstance(value, bool)), None)


def _branch_kind(branch: object) -> type | None:
    """The kind of list item a branch of the `input` union takes, from pydantic's label."""
    label = str(branch)
    if label == "list[str]":
        return str
    if label.startswith("list[list["):
        return list
    if "MultimodalItem" in label:
        return dict
    return int if label.startswith("list[") and "int" in label else None


def _input_element_problem(errors: list[dict]) -> str | None:
    """For a list `input`, the first bad element of the form its first item sets (a list that
    starts with a string is a list of strings, …), named by its path ("input[2]"), instead of
    the generic list of accepted forms. None when the input is not such a list."""
    whole = next((e.get("input") for e in errors if tuple(e["loc"]) == ("input", "str")), None)
    if not isinstance(whole, list) or not whole or (kind := _kind(whole[0])) is None:
        return None
    for e in errors:
        loc = e["loc"]
        if len(loc) >= 3 and _branch_kind(loc[1]) == kind:
            path = "input" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc[2:])
            got = e.get("input")
            message = (
                f"{path}: {e.get('msg', 'invalid value')} (got {got!r}); 'input' is a list of "
                f"the kind its first item sets: {_KINDS[kind]} here"
            )
            if isinstance(got, float) and kind in (int, list):
                message += ", and token ids are integers"
            return message
    return None


def from_library_error(error: JaxEmbedError) -> APIError:
    if isinstance(error, InputTooLongError):
        return invalid(str(error), param="input", code="context_length_exceeded")
    if isinstance(error, RequestTooLargeError):
        return APIError(413, str(error), param=error.param, code=error.code)
    if isinstance(error, InvalidInputError):
        return invalid(str(error), param=error.param, code=error.code)
    if isinstance(error, OverloadedError):
        return overloaded(str(error), error.retry_after)
    if isinstance(error, EngineUnavailableError):
        return unavailable(str(error), error.retry_after)
    if isinstance(error, EngineError):
        return APIError(500, str(error), type="server_error", code="engine_error")
    return APIError(500, "internal error", type="server_error")


def _retry_later(code: str, message: str, retry_after: float) -> APIError:
    return APIError(
        503,
        message,
        type="server_error",
        code=code,
        headers={"Retry-After": str(max(1, math.ceil(retry_after)))},
    )


def overloaded(message: str, retry_after: float) -> APIError:
    """Queue or adapter slots full: a 503 the client retries after `Retry-After`."""
    return _retry_later("overloaded", message, retry_after)


def unavailable(message: str, retry_after: float) -> APIError:
    """The engine cannot serve now (a lost follower process): a 503 for load balancers."""
    return _retry_later("engine_unavailable", message, retry_after)


def model_not_found(name: str, served: list[str]) -> APIError:
    return APIError(
        404,
        f"The model '{name}' does not exist; this server serves {served}",
        param="model",
        code="model_not_found",
    )
