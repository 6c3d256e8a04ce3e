"""`POST /v1/embeddings` (and `/invocations`): parse, validate, route, await the service, answer.

Handlers read everything they need from `request.app.ctx` (server/app.py);
the computation is the model's `EmbeddingService` (jaxembed/engine/service/embedding.py).
Library errors become API errors in one place (the app's exception handler).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import numpy as np
from sanic import Request

from jaxembed.engine.request.jobs import EmbedJob, EmbedOptions, EmbedResult
from jaxembed.engine.request.progress import RequestProgress
from jaxembed.engine.service.sparse import SparseOptions, to_sparse
from jaxembed.errors import DeadlineError
from jaxembed.media_loader import fetch_items
from jaxembed_server import vllm_fields
from jaxembed_server.errors import APIError, invalid, unavailable
from jaxembed_server.http import (
    base64_rows,
    json_response,
    notice_disconnects,
    parse_json,
    validated,
)
from jaxembed_server.protocol import EmbeddingRequest, MultimodalItem
from jaxembed_server.served import Route

log = logging.getLogger("jaxembed.server")
R = TypeVar("R")


def check_sparse_request(req: EmbeddingRequest, route: Route) -> SparseOptions | None:
    """The pruning of a `embedding_type: "sparse"` request (None: a dense request)."""
    if req.embedding_type != "sparse":
        return None
    if not route.model.card.sparse:
        raise invalid(
            f"{route.answer} is a dense embedding model; embedding_type 'sparse' needs a "
            "SPLADE model",
            param="embedding_type",
        )
    # Always {indices, values} JSON objects: encoding_format does not apply (the openai client
    # asks for base64 by default and decodes only string embeddings).
    return SparseOptions(req.sparse_top_k, req.sparse_threshold)


def sparse_embeddings(vectors: np.ndarray, options: SparseOptions) -> list[dict]:
    return [
        {
            "object": "embedding",
            "embedding": {"indices": v.indices.tolist(), "values": v.values.tolist()},
            "index": i,
        }
        for i, v in enumerate(to_sparse(vectors, options))
    ]


def encode_embeddings(vectors: np.ndarray, encoding_format: str) -> list[dict]:
    """float32 rows (or quantized integer rows) as JSON numbers or base64 of their bytes."""
    rows = base64_rows(vectors) if encoding_format == "base64" else list(vectors)
    return [{"object": "embedding", "embedding": row, "index": i} for i, row in enumerate(rows)]


def check_size(items: Any, max_inputs: int) -> None:
    count = 1 if isinstance(items, str) else len(items)
    if count == 0:
        raise invalid("'input' must not be empty", param="input")
    if count > max_inputs:
        raise invalid(f"'input' has {count} items; the maximum is {max_inputs}", param="input")


def check_serving(request: Request, route: Route | None = None) -> None:
    """503 while draining, or while the routed model's engine cannot run (a lost host)."""
    if request.app.ctx.state["draining"]:
        raise APIError(
            503,
            "the server is shutting down",
            type="server_error",
            code="shutting_down",
            headers={"Retry-After": "5"},
        )
    if route is not None and (reason := route.model.service.unhealthy_reason()):
        raise unavailable(f"the model is not available: {reason}", retry_after=5)


def request_deadline(request: Request) -> float | None:
    """time.monotonic() by which --request-timeout ends this request (None: no limit)."""
    timeout = request.app.ctx.config.request_timeout
    return request.ctx.start + timeout if timeout else None


def embed_options(request: Request, req: EmbeddingRequest, route: Route) -> EmbedOptions:
    deadline = request_deadline(request)
    chunking = route.model.config.chunking if req.chunking is None else req.chunking
    return EmbedOptions(
        priority=req.priority,
        **vllm_fields.truncation(req, route),
        normalize=req.normalize,
        prompt_name=req.input_type,
        instruction=req.instruction,
        task=req.task,
        dimensions=req.dimensions,
        adapter=route.adapter,
        chunking=chunking,
        video_frames=req.video_frames,
        deadline=deadline,
        precision="float32" if req.embedding_type in ("float", "sparse") else req.embedding_type,
    )


async def run_job(
    request: Request, route: Route, inputs: Any, options: EmbedOptions
) -> EmbedResult:
    """What every API's embedding route does once it has parsed its request: refuse early
    when the model's queue is full, check and fetch media, run the job on the model's
    service under --request-timeout, and count what was embedded."""
    ctx = request.app.ctx
    check_size(inputs, ctx.config.max_inputs)
    service = route.model.service

    async def compute(progress: RequestProgress) -> EmbedResult:
        items = inputs
        if isinstance(items, list) and items and isinstance(items[0], MultimodalItem):
            service.check_items(items, route.answer)  # before anything is fetched
            items = await fetch_items(ctx.media, items)
        return await service.embed(EmbedJob(items, options), progress)

    count = 1 if isinstance(inputs, str) else len(inputs)
    return await run_work(request, route, count, compute)


async def run_work(
    request: Request,
    route: Route,
    count: int,
    compute: Callable[[RequestProgress], Awaitable[R]],
) -> R:
    """Run one request's work on its model's service: refused at once when the queue is
    full, under --request-timeout, its phases recorded for tracing, its `count` inputs and
    `result.tokens` counted in the metrics. Embedding and scoring routes share it."""
    ctx = request.app.ctx
    check_serving(request, route)
    route.model.service.check_capacity()
    progress = request.ctx.progress = RequestProgress()  # its phases become trace spans
    request.ctx.model = route.model.name
    try:
        result = await within_request_timeout(request, compute(progress), progress, count, route)
    except DeadlineError as e:
        raise too_slow(e, ctx.config.request_timeout) from None
    ctx.metrics.inputs.labels(model=route.model.name).inc(count)
    ctx.metrics.tokens.labels(model=route.model.name).inc(result.tokens)
    return result


async def embeddings(request: Request):
    check_serving(request)
    notice_disconnects(request)
    body = parse_json(request)
    vllm_fields.refuse_unsupported_fields(body)
    req = validated(EmbeddingRequest, body, request)
    vllm_fields.check_input_or_messages(req)
    route = request.app.ctx.models.route(req.model, req.lora_path)
    sparse = check_sparse_request(req, route)
    options = embed_options(request, req, route)
    if req.messages is None:
        inputs = req.input
    elif route.model.card.vl_template:
        inputs, instruction = vllm_fields.vision_language_chat(req)
        options = dataclasses.replace(options, instruction=instruction or req.instruction)
    else:
        inputs = vllm_fields.chat_input(
            req, route, trust_template=request.app.ctx.config.trust_request_chat_template
        )
    result = await run_job(request, route, inputs, options)
    with request.ctx.progress.timed("encode"):
        return embeddings_response(req, route, result.vectors, result.tokens, sparse)


def embeddings_response(
    req: EmbeddingRequest,
    route: Route,
    vectors: np.ndarray,
    total: int,
    sparse: SparseOptions | None = None,
):
    if req.user:
        log.info(
            "embedded %d inputs (%d tokens) for user %s",
            len(vectors),
            total,
            req.user,
            extra={"user": req.user, "inputs": len(vectors), "tokens": total},
        )
    return json_response(
        {
            "object": "list",
            "data": (
                encode_embeddings(vectors, req.encoding_format)
                if sparse is None
                else sparse_embeddings(vectors, sparse)
            ),
            "model": route.answer,
            "usage": {"prompt_tokens": total, "total_tokens": total},
        }
    )


async def within_request_timeout(
    request: Request, work, progress: RequestProgress, n: int, route: Route
):
    """Run the request's work under --request-timeout; past it, a 504 `timeout` whose
    undispatched rows never reach the device (the batcher drops a cancelled job)."""
    timeout = request.app.ctx.config.request_timeout
    if not timeout:
        return await work
    left = timeout - (time.monotonic() - request.ctx.start)
    try:
        async with asyncio.timeout(max(left, 0.001)):  # no extra task per request
            return await work
    except TimeoutError:
        request.app.ctx.metrics.request_timeouts.labels(model=route.model.name).inc()
        log.warning(
            "request timed out: --request-timeout %g s reached with %d of %d inputs embedded",
            timeout,
            progress.rows_done,
            n,
        )
        raise APIError(
            504,
            f"the request did not finish within this server's --request-timeout of "
            f"{timeout:g} s ({progress.rows_done} of {n} inputs were "
            "embedded and discarded); send smaller requests (fewer or shorter inputs per "
            "request) or ask the operator to raise --request-timeout",
            type="server_error",
            code="timeout",
        ) from None


def too_slow(error: DeadlineError, request_timeout: float) -> APIError:
    """Admission refused the job: it cannot finish within --request-timeout (a 413)."""
    rate = error.tokens / error.expected_seconds
    return APIError(
        413,
        f"the request's {error.tokens} uncached tokens would take about "
        f"{error.expected_seconds:.0f} s at the {rate:.0f} tokens/s this server measures, more "
        f"than its --request-timeout of {request_timeout:g} s; split it into requests of at "
        f"most about {int(rate * request_timeout * 0.5)} tokens",
        param="input",
        code="request_too_large",
    )


async def invocations(request: Request):
    """SageMaker's one route: an embeddings request, in `input` or chat `messages` form."""
    body = parse_json(request)
    if "input" in body or "messages" in body:
        return await embeddings(request)
    raise invalid("/invocations takes an embeddings request (`input` or `messages`)", param="input")
