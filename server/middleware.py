"""What runs around every route: request ids, API keys, the access log and metrics, and
the one place where any exception becomes an error response in the API's shape."""

from __future__ import annotations

import logging
import time

import orjson
from sanic import Request, Sanic
from sanic.exceptions import SanicException
from sanic.response import HTTPResponse

from jaxembed.errors import JaxEmbedError
from jaxembed_server import docs_ui, fields
from jaxembed_server.auth import OPEN_PATHS, check_api_key
from jaxembed_server.errors import APIError, from_library_error
from jaxembed_server.http import error_response, request_id
from jaxembed_server.logs import request_id_var

log = logging.getLogger("jaxembed.server")
access = logging.getLogger("jaxembed.access")
QUIET_ROUTES = frozenset({"/health", "/ready", "/metrics"})
SANIC_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
    408: "timeout",
}


async def before_request(request: Request):
    request.ctx.start = time.monotonic()
    request.ctx.start_ns = time.time_ns()
    request.ctx.request_id = request_id(request.headers.get("x-request-id"))
    request_id_var.set(request.ctx.request_id)
    if request.path not in OPEN_PATHS and not docs_ui.is_open(request.path):
        try:
            check_api_key(request.headers.get("authorization"), request.app.ctx.config.api_keys)
        except APIError as e:
            return error_response(e)
    return None


async def after_response(request: Request, response: HTTPResponse):
    if request.app.ctx.state["draining"] and request.stream is not None:
        # Draining: answer, then close the connection, so a client on keep-alive reconnects
        # (to another replica, or to a refusal) instead of holding this one until it is cut.
        request.stream.keep_alive = False
    metrics = request.app.ctx.metrics
    response.headers["X-Request-Id"] = getattr(request.ctx, "request_id", "")
    if warning := fields.warning_header(request):
        response.headers["Warning"] = warning
    route = "/" + request.route.path.lstrip("/") if request.route else "unmatched"
    metrics.requests.labels(route=route, status=str(response.status)).inc()
    started = getattr(request.ctx, "start", None)
    seconds = time.monotonic() - started if started is not None else 0.0
    metrics.latency.labels(route=route).observe(seconds)
    # The access line; probes and scrapes only at debug level.
    access.log(
        logging.DEBUG if route in QUIET_ROUTES else logging.INFO,
        "%s %s %d %.1f ms",
        request.method,
        request.path,
        response.status,
        seconds * 1000,
        extra={
            "request_id": getattr(request.ctx, "request_id", None),
            "method": request.method,
            "path": request.path,
            "status": response.status,
            "duration_ms": round(seconds * 1000, 2),
        },
    )
    tracer = request.app.ctx.tracer
    if tracer is not None and route not in QUIET_ROUTES:
        trace_request(tracer, request, response, route)
    if response.status >= 400:
        try:
            code = orjson.loads(response.body)["error"].get("code") or str(response.status)
        except Exception:
            code = str(response.status)
        metrics.errors.labels(code=code).inc()


def trace_request(tracer, request: Request, response: HTTPResponse, route: str) -> None:
    progress = getattr(request.ctx, "progress", None)
    attributes = {
        "http.request.method": request.method,
        "http.route": route,
        "http.response.status_code": response.status,
        "jaxembed.request_id": getattr(request.ctx, "request_id", ""),
    }
    if model := getattr(request.ctx, "model", None):
        attributes["jaxembed.model"] = model
    tracer.record(
        f"{request.method} {route}",
        getattr(request.ctx, "start_ns", time.time_ns()),
        time.time_ns(),
        attributes,
        progress.phases if progress is not None else (),
        request.headers,
    )


async def api_error(request: Request, error: APIError):
    return error_response(error)


async def library_error(request: Request, error: JaxEmbedError):
    return error_response(from_library_error(error))


async def sanic_error(request: Request, error: SanicException):
    status = getattr(error, "status_code", 500) or 500
    kind = "invalid_request_error" if status < 500 else "server_error"
    message = str(error) if status < 500 else "internal error"
    if status == 413:
        message = (
            f"the request body is larger than {request.app.ctx.config.max_request_bytes} bytes"
        )
    # 405 carries `Allow` (RFC 9110), which Sanic puts on the exception's headers.
    headers = {
        k: v for k, v in (getattr(error, "headers", None) or {}).items() if k.lower() == "allow"
    }
    return error_response(
        APIError(status, message, type=kind, code=SANIC_CODES.get(status), headers=headers)
    )


async def unexpected_error(request: Request, error: Exception):
    log.exception("unexpected error on %s", request.path)
    return error_response(APIError(500, "internal error", type="server_error"))


def install(app: Sanic) -> None:
    app.on_request(before_request)
    app.on_response(after_response)
    app.exception(APIError)(api_error)
    app.exception(JaxEmbedError)(library_error)
    app.exception(SanicException)(sanic_error)
    app.exception(Exception)(unexpected_error)
