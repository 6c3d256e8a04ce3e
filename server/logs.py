"""Logging setup: human-readable text or one JSON object per line, with the request id.

The request id (the client's `X-Request-Id`, or a generated one) is kept in a
context variable for the duration of a request, so every line logged while
handling it — validation, the batcher's warnings, the access line — carries
it without being passed around.
"""

from __future__ import annotations

import atexit
import contextvars
import datetime
import json
import logging
import logging.handlers
import queue

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "jaxembed_request_id", default=None
)

# LogRecord attributes that are not user-supplied `extra` fields.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = request_id_var.get()
        return True


_JSON_SCALARS = str | int | float | bool


class JsonFormatter(logging.Formatter):
    """{"ts", "level", "logger", "message", "request_id"?, ...extra fields, "exc"?}."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and value is not None and not key.startswith("_"):
                entry[key] = value if isinstance(value, _JSON_SCALARS | list) else str(value)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        rid = getattr(record, "request_id", None)
        return f"{line} [request {rid}]" if rid else line


class _Handoff(logging.handlers.QueueHandler):
    """Hands each record to the writer thread as it is: formatting and the write to stderr
    happen there, not on the event loop (an access line per request would otherwise cost the
    loop a formatted write each time). The request id is read here, in the caller's context."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record


_listener: logging.handlers.QueueListener | None = None


QUIET_PROBES = "jax._src.xla_bridge"


def configure_logging(level: str, fmt: str = "text") -> None:
    """One stderr handler on the root logger, for jaxembed's and Sanic's loggers alike, fed
    through a queue by a writer thread (flushed at exit).

    `force=True`-style: an imported library may already have configured the root
    logger; Sanic's own handlers are removed so every line has the same format.
    """
    global _listener
    if _listener is not None:
        _listener.stop()
    writer = logging.StreamHandler()
    writer.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    records: queue.SimpleQueue = queue.SimpleQueue()
    handler = _Handoff(records)
    handler.addFilter(RequestIdFilter())
    _listener = logging.handlers.QueueListener(records, writer)
    _listener.start()
    atexit.register(_listener.stop)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("jaxembed", "sanic.root", "sanic.error", "sanic.server", "sanic.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
        logger.setLevel(level.upper())
    # JAX probes every backend it knows at first use and reports, at INFO, each one this
    # machine lacks ("Unable to initialize backend 'tpu' ... libtpu.so"): it reads like an
    # error on every CPU or GPU host. The backend in use is in our own "loaded" line.
    quiet = logging.DEBUG if level.upper() == "DEBUG" else logging.WARNING
    logging.getLogger(QUIET_PROBES).setLevel(quiet)
