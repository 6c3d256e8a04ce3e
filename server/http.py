"""Small HTTP helpers shared by every route: JSON in and out, request ids, disconnects."""

from __future__ import annotations

import uuid
from typing import Any

import orjson
from sanic import Request
from sanic.response import HTTPResponse, raw

from jaxembed_server.errors import APIError, invalid

MAX_REQUEST_ID = 128


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> HTTPResponse:
    return raw(
        orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY),
        status=status,
        headers=headers,
        content_type="application/json",
    )


def error_response(error: APIError) -> HTTPResponse:
    return json_response(error.body(), status=error.status, headers=error.headers)


def parse_json(request: Request) -> dict:
    try:
        body = orjson.loads(request.body or b"")
    except orjson.JSONDecodeError:
        raise invalid("the request body is not valid JSON", code="invalid_json") from None
    if not isinstance(body, dict):
        raise invalid("the request body must be a JSON object", code="invalid_json")
    return body


def request_id(client_value: str | None) -> str:
    """The client's X-Request-Id if it is a sane token, else a fresh one (ids end up in logs)."""
    if (
        client_value
        and len(client_value) <= MAX_REQUEST_ID
        and client_value.isprintable()
        and client_value.isascii()
    ):
        return client_value
    return uuid.uuid4().hex


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
