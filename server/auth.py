"""Bearer API keys, compared in constant time against every configured key."""

from __future__ import annotations

import hmac

from jaxembed_server.errors import APIError

OPEN_PATHS = frozenset({"/health", "/ready"})


def check_api_key(authorization: str | None, keys: tuple[str, ...]) -> None:
    if not keys:
        return
    scheme, _, token = (authorization or "").partition(" ")
    supplied = token.strip().encode() if scheme.lower() == "bearer" else b""
    # Compare against every key so timing does not reveal which one (or how much) matched.
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(supplied, key.encode())
    if not matched:
        raise APIError(
            401,
            "Incorrect or missing API key: send 'Authorization: Bearer <key>'",
            type="authentication_error",
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )
