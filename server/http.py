"""Small HTTP helpers shared by every route: JSON in and out, request ids, disconnects."""

from __future__ import annotations

import base64
import functools
import itertools
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import numpy as np
import orjson
from pydantic import BaseModel, ValidationError
from sanic import Request
from sanic.response import HTTPResponse, raw

from jaxembed.errors import JaxEmbedError
from jaxembed_server.errors import APIError, from_library_error, from_validation_error, invalid
from jaxembed_server.fields import checked_fields

log = logging.getLogger("jaxembed.server")
Model = TypeVar("Model", bound=BaseModel)
Handler = Callable[[Request], Awaitable[HTTPResponse]]

MAX_REQUEST_ID = 128
# Generated request ids: a random prefix per process and a counter (unique, and far cheaper
# per request than uuid4, whose urandom call showed in the event loop's profile); 32 hex
# digits, the shape of the uuid4 hex ids clients and log pipelines already parse.
_ID_PREFIX = secrets.token_hex(11)
_ids = itertools.count(1)


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> HTTPResponse:
    return raw(
        orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY),
        status=status,
        headers=headers,
        content_type="application/json",
    )


def base64_rows(vectors: np.ndarray) -> list[str]:
    """Each row's bytes in base64: float32 little-endian (what the openai client decodes with
    np.frombuffer), integer precisions one byte per value (or per 8 bits)."""
    rows = vectors.astype("<f4", copy=False) if vectors.dtype == np.float32 else vectors
    return [base64.b64encode(row.tobytes()).decode("ascii") for row in rows]


def error_response(error: APIError) -> HTTPResponse:
    return json_response(error.body(), status=error.status, headers=error.headers)


def parse_json(request: Request) -> dict:
    try:
        body = orjson.loads(request.body or b"")
    except orjson.JSONDecodeError as e:
        if str(e).startswith("depth limit exceeded"):
            raise _not_json("the request body nests JSON deeper than 1024 levels") from None
        raise _not_json(f"the request body is not valid JSON ({e})") from None
    if not isinstance(body, dict):
        raise _not_json("the request body must be a JSON object")
    return body


def _not_json(message: str) -> APIError:
    error = invalid(message)
    error.reason = "invalid_json"
    return error


def request_id(client_value: str | None) -> str:
    """The client's X-Request-Id if it is a sane token, else a fresh one (ids end up in logs)."""
    if (
        client_value
        and len(client_value) <= MAX_REQUEST_ID
        and client_value.isprintable()
        and client_value.isascii()
    ):
        return client_value
    return f"{_ID_PREFIX}{next(_ids):010x}"


def notice_disconnects(request: Request) -> None:
    """Let a client's disconnect cancel the handler while it waits for the device.

    Sanic pauses reading the socket once a large body fills its receive
    buffer and leaves it paused while the handler runs, so the client's FIN
    would go unseen until we answer. With reading resumed, connection loss
    cancels the handler, and the Batcher drops the request's queued rows.
    """
    transport = request.transport
    if transport is not None and not transport.is_closing():
        transport.resume_reading()


def validated(model: type[Model], body: dict, request: Request | None = None) -> Model:
    """The body as `model`, or a 400 naming the first problem (an unknown field first: its
    typo may be why a required field is missing)."""
    body = checked_fields(request, model, body)
    try:
        return model.model_validate(body)
    except ValidationError as e:
        error = from_validation_error(e)
        error.reason = "invalid_fields"
        raise error from None


def parse_body(request: Request, model: type[Model]) -> Model:
    return validated(model, parse_json(request), request)


def with_error_shape(render: Callable[[APIError], HTTPResponse]) -> Callable[[Handler], Handler]:
    """Every error of a peer API's route leaves in that API's shape (`render`), never in
    OpenAI's: library errors through the one mapping, anything unexpected as a 500."""

    def decorate(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def wrapped(request: Request) -> HTTPResponse:
            try:
                return await handler(request)
            except APIError as e:
                return render(e)
            except JaxEmbedError as e:
                return render(from_library_error(e))
            except Exception:
                log.exception("unexpected error on %s", request.path)
                return render(APIError(500, "internal error", type="server_error"))

        return wrapped

    return decorate
