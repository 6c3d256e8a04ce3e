"""Reranking: `POST /v1/rerank`, `/v2/rerank` and `/rerank` in Cohere's / Jina's shape, and
TEI's shape on `/rerank` when the body has `texts` instead of `documents`.

Only reranker models answer here (an embedding model named in `model` is a 400 that
lists the models that rerank; no `model` means the first reranker configured). One
query against N documents is one job: its pairs share device batches (engine/pairs.py).

Cohere / Jina: `query`, `documents` (strings or `{"text": ...}`), `top_n` (default
all), `return_documents` (default false), `max_tokens_per_doc` → `{id, model,
results: [{index, relevance_score, document?: {text}}], usage, meta}` best first.
Extensions: `truncate` (default true: Cohere cuts long documents), `truncation_direction`,
`instruction` (rerankers with a prompt template), `priority`. Errors: Cohere's
`{"id", "message"}`. TEI: `query`, `texts`, `raw_scores`, `return_text`, `truncate`
(default false), `truncation_direction` → `[{index, score, text?}]`, TEI's errors.
"""

from __future__ import annotations

import math
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr
from sanic import Request
from sanic.response import HTTPResponse

from jaxembed.engine.request.jobs import ScoreJob, ScoreOptions, ScoreResult
from jaxembed.engine.service.scores import ranking
from jaxembed_server.api_cohere import cohere_error
from jaxembed_server.api_tei import tei_error
from jaxembed_server.errors import APIError, invalid
from jaxembed_server.http import (
    json_response,
    notice_disconnects,
    parse_body,
    parse_json,
    with_error_shape,
)
from jaxembed_server.route_embeddings import check_serving, request_deadline, run_work
from jaxembed_server.served import Route


class RerankDocument(BaseModel):
    model_config = ConfigDict(extra="ignore")

    text: StrictStr


class RerankRequest(BaseModel):
    """Cohere's (v1/v2) and Jina's rerank request; a field it does not define is a 400 (server/fields.py)."""

    model_config = ConfigDict(extra="ignore")

    model: StrictStr | None = Field(None, description="a served reranker (default: the first)")
    query: StrictStr = Field(min_length=1)
    documents: list[StrictStr | RerankDocument] = Field(
        min_length=1, description="strings or {text} objects; at most --max-inputs"
    )
    top_n: StrictInt | None = Field(None, ge=1, description="how many results (default all)")
    return_documents: StrictBool = Field(False, description="echo each result's document text")
    max_tokens_per_doc: StrictInt | None = Field(
        None, ge=1, description="cut every document to this many tokens first"
    )
    truncate: StrictBool = Field(
        True, description="jaxembed: cut documents that do not fit beside the query (else a 400)"
    )
    truncation_direction: Literal["left", "right"] = Field(
        "right", description="jaxembed: the side of the document that is cut"
    )
    instruction: StrictStr | None = Field(
        None, description="jaxembed: the task, for rerankers with a prompt (Qwen3-Reranker)"
    )
    priority: StrictInt = Field(0, description="jaxembed: lower is served sooner")


class TEIRerankRequest(BaseModel):
    """TEI's `RerankRequest` (router/src/http/types.rs); a field it does not define is a 400 (server/fields.py)."""

    model_config = ConfigDict(extra="ignore")

    query: StrictStr
    texts: list[StrictStr]
    truncate: StrictBool | None = Field(None, description="cut over-long documents (else 413)")
    truncation_direction: Literal["left", "right", "Left", "Right"] = "right"
    raw_scores: StrictBool = Field(False, description="logits instead of the model's activation")
    return_text: StrictBool = False


def reranker_route(request: Request, model: str | None) -> Route:
    """The reranker a request names (or the first one), refusing a multi-label classifier:
    ranking needs one relevance score per document."""
    route = request.app.ctx.models.route(model, None, kind="reranker")
    card = route.model.card
    if card.dimensions != 1:
        raise invalid(
            f"{route.answer} has {card.dimensions} labels; ranking needs one relevance score "
            "per document",
            param="model",
            code="wrong_model_kind",
        )
    return route


async def score_pairs(
    request: Request, route: Route, job: ScoreJob, param: str = "documents"
) -> ScoreResult:
    """Score `job`'s pairs on the route's model: --max-inputs (on `param`), the request
    timeout and the metrics as for embeddings. Every rerank and score route runs this."""
    limit = request.app.ctx.config.max_inputs
    if len(job.pairs) > limit:
        raise invalid(
            f"{len(job.pairs)} `{param}` given; the maximum per request is {limit}", param=param
        )
    service = route.model.service
    return await run_work(
        request, route, len(job.pairs), lambda progress: service.score(job, progress)
    )


@with_error_shape(cohere_error)
async def rerank(request: Request) -> HTTPResponse:
    """Cohere / Jina: results best first, `top_n` of them."""
    check_serving(request)
    notice_disconnects(request)
    req = parse_body(request, RerankRequest)
    route = reranker_route(request, req.model)
    texts = [d if isinstance(d, str) else d.text for d in req.documents]
    options = ScoreOptions(
        priority=req.priority,
        truncate=req.truncate,
        truncation_direction=req.truncation_direction,
        max_document_tokens=req.max_tokens_per_doc,
        instruction=req.instruction,
        deadline=request_deadline(request),
    )
    result = await score_pairs(request, route, ScoreJob.rerank(req.query, texts, options))
    results = []
    for i in ranking(result.scores, req.top_n):
        entry = {"index": i, "relevance_score": float(result.scores[i])}
        if req.return_documents:
            entry["document"] = {"text": texts[i]}
        results.append(entry)
    usage = {"prompt_tokens": result.tokens, "total_tokens": result.tokens}
    meta = {
        "api_version": {"version": "2"},
        "billed_units": {"search_units": math.ceil(len(texts) / 100)},
    }
    return json_response(
        {
            "id": uuid.uuid4().hex,
            "model": route.answer,
            "results": results,
            "usage": usage,
            "meta": meta,
        }
    )


@with_error_shape(tei_error)
async def tei_rerank(request: Request) -> HTTPResponse:
    """TEI: a bare list `[{index, score, text?}]`, best first."""
    check_serving(request)
    notice_disconnects(request)
    req = parse_body(request, TEIRerankRequest)
    if not req.texts:
        raise APIError(400, "`texts` cannot be empty", param="texts", code="empty")
    if not req.query.strip():
        raise invalid("the query must be a non-empty string", param="query")
    route = reranker_route(request, None)  # TEI serves one model
    options = ScoreOptions(
        truncate=bool(req.truncate),
        truncation_direction=req.truncation_direction.lower(),
        raw=req.raw_scores,
        deadline=request_deadline(request),
    )
    result = await score_pairs(
        request, route, ScoreJob.rerank(req.query, req.texts, options), "texts"
    )
    out = []
    for i in ranking(result.scores):
        entry = {"index": i, "score": float(result.scores[i])}
        if req.return_text:
            entry["text"] = req.texts[i]
        out.append(entry)
    return json_response(out)


async def rerank_any_shape(request: Request) -> HTTPResponse:
    """`/rerank`: TEI's shape when the body has `texts` and no `documents`, else Cohere's."""
    try:
        body = parse_json(request)
    except APIError:
        body = None  # the Cohere handler answers it in its shape
    if isinstance(body, dict) and "texts" in body and "documents" not in body:
        return await tei_rerank(request)
    return await rerank(request)


def install(app) -> None:
    app.add_route(rerank, "/v1/rerank", methods=["POST"], name="rerank_v1")
    app.add_route(rerank, "/v2/rerank", methods=["POST"], name="rerank_v2")
    app.add_route(rerank_any_shape, "/rerank", methods=["POST"], name="rerank")
