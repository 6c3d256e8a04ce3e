"""Request fields nobody defined are refused, naming the field (and the one probably meant).

OpenAI answers `{"input": "hi", "dimension": 64}` with a 400 ("Unrecognized request argument
supplied: dimension"); silently ignoring it would return all 384 values and leave the user to
find the typo. Each request model lists, besides its own fields, the fields that peers' real
clients send and that we accept without modelling (`peer_fields`). Operators who must accept
anything start the server with --allow-unknown-fields: such fields are then dropped, and the
answer carries a `Warning` header and the log a line naming them.
"""

from __future__ import annotations

import difflib
import functools
import logging

from pydantic import BaseModel
from sanic import Request

from jaxembed_server.errors import APIError, invalid

log = logging.getLogger("jaxembed.server")


@functools.cache
def known_fields(model: type[BaseModel]) -> frozenset[str]:
    """The top-level names `model` accepts: its fields (and their aliases) and `peer_fields`."""
    names = set(getattr(model, "peer_fields", ()))
    for name, field in model.model_fields.items():
        names.add(field.alias or name)
    return frozenset(names)


def unknown_field_error(field: str, known: frozenset[str]) -> APIError:
    message = f"Unrecognized request argument supplied: {field}"
    if close := difflib.get_close_matches(field, sorted(known), n=1, cutoff=0.7):
        message += f" (did you mean '{close[0]}'?)"
    return invalid(message, param=field, code="unknown_field")


def checked_fields(request: Request | None, model: type[BaseModel], body: dict) -> dict:
    """`body` if every field is one `model` knows; else a 400 naming the first unknown one,
    or — with --allow-unknown-fields — `body` without them (noted on the request for the
    response's Warning header, and logged)."""
    known = known_fields(model)
    unknown = [name for name in body if name not in known]
    if not unknown:
        return body
    if request is None or not request.app.ctx.config.allow_unknown_fields:
        raise unknown_field_error(unknown[0], known)
    request.ctx.ignored_fields = unknown
    log.warning(
        "ignored unknown request fields on %s: %s",
        request.path,
        ", ".join(unknown),
        extra={"ignored_fields": unknown},
    )
    return {name: value for name, value in body.items() if name in known}


def warning_header(request: Request) -> str | None:
    """RFC 7234's Warning (299: a persistent warning) for fields that were dropped."""
    ignored = getattr(request.ctx, "ignored_fields", None)
    if not ignored:
        return None
    return f'299 jaxembed "unknown request fields ignored: {", ".join(ignored)}"'
