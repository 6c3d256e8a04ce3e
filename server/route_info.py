"""What clients and operators read: `/v1/models`, `/health`, `/ready`, `/metrics`, `/openapi.json`."""

from __future__ import annotations

import asyncio
import time

from sanic import Request
from sanic.response import raw, text

from jaxembed_server.http import json_response
from jaxembed_server.served import ServedModel, ServedModels


def quantization_entry(model: ServedModel) -> dict:
    """The precisions offered and where the int8/uint8 ranges come from (the ranges once
    known: computed on the first int8/uint8 request, or read from the operator's file)."""
    calibration = model.service.calibration
    ranges = calibration.full_ranges()
    return {
        "embedding_types": ["float", "int8", "uint8", "binary", "ubinary"],
        "int8_calibration": calibration.source,
        "int8_ranges": None if ranges is None else ranges.tolist(),
    }


def model_entries(model: ServedModel, created: int) -> list[dict]:
    """/v1/models rows of one model: each served name, then each adapter as `name:adapter`."""
    card = model.card
    common = {
        "object": "model",
        "created": created,
        "owned_by": "jaxembed",
        "dimensions": card.dimensions,
        "max_model_len": card.max_length,
        "modalities": list(card.modalities),
        "kind": card.kind,
    }
    if card.kind == "embedding":
        common["quantization"] = quantization_entry(model)
        # sentence-transformers' similarity_fn_name: the comparison the model was trained for.
        common["similarity"] = card.similarity_fn_name
        if card.default_prompt_name:
            common["default_prompt_name"] = card.default_prompt_name
    rows = [{"id": name, **common} for name in model.names]
    rows += [
        {"id": f"{model.name}:{adapter}", **common, "parent": model.name, "root": adapter}
        for adapter in model.adapters()
    ]
    return rows


async def models(request: Request):
    created = int(time.time())
    data = [row for model in request.app.ctx.models for row in model_entries(model, created)]
    return json_response({"object": "list", "data": data})


async def root(request: Request):
    """`GET /`: where to go from here (a browser or a curl that guessed the URL)."""
    return json_response(
        {
            "name": "jaxembed",
            "version": request.app.ctx.openapi["info"]["version"],
            "models": request.app.ctx.models.names,
            "docs": "/docs",
            "openapi": "/openapi.json",
            "embeddings": "/v1/embeddings",
        }
    )


async def health(request: Request):
    return text("ok")


def not_ready_reason(draining: bool, models: ServedModels) -> str | None:
    """Readiness: every model warm, not draining, and (multi-host) every follower alive."""
    if draining:
        return "shutting down"
    cold = [m.name for m in models if not m.service.warm]
    if cold:
        return f"warming up: {', '.join(cold)}"
    for model in models:
        if reason := model.service.unhealthy_reason():
            return f"{model.name}: {reason}" if len(models) > 1 else reason
    return None


async def ready(request: Request):
    ctx = request.app.ctx
    reason = not_ready_reason(ctx.state["draining"], ctx.models)
    ctx.metrics.ready.set(0 if reason else 1)
    return text(f"not ready: {reason}" if reason else "ready", status=503 if reason else 200)


async def metrics(request: Request):
    ctx = request.app.ctx
    m = ctx.metrics
    for model in ctx.models:
        status, name = model.service.status(), model.name
        m.queue_requests.labels(model=name).set(status.queued_requests)
        m.queue_tokens.labels(model=name).set(status.queued_tokens)
        m.active_requests.labels(model=name).set(status.active_requests)
        m.cache_bytes.labels(model=name).set(status.cache_bytes)
        m.lazy_compiles.labels(model=name).set(status.lazy_compiles)
        m.compile_seconds.labels(model=name).set(status.compile_seconds)
        m.compile_cache_hits.set(status.cache_hits)
        m.compile_cache_misses.set(status.cache_misses)
    m.loop_tasks.set(len(asyncio.all_tasks()))
    m.ready.set(0 if not_ready_reason(ctx.state["draining"], ctx.models) else 1)
    return raw(m.render(), content_type="text/plain; version=0.0.4")


async def openapi(request: Request):
    return json_response(request.app.ctx.openapi)
