"""Hugging Face text-embeddings-inference's native API: `POST /embed`, `POST /`,
`POST /embed_sparse` (SPLADE models), `GET /info`.

A drop-in for TEI clients (`huggingface_hub.InferenceClient(base_url).feature_extraction`
posts to the root URL). Requests go to the server's first model, as TEI serves one.
Errors use TEI's body, `{"error": "...", "error_type": "validation"}`, and its statuses:
validation 413, tokenizer 422, empty 400, overloaded 429, unhealthy 503, backend 424.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr
from sanic import Request
from sanic.response import HTTPResponse

import jaxembed
from jaxembed.engine.request.jobs import EmbedOptions
from jaxembed.engine.service.sparse import SparseOptions, to_sparse
from jaxembed_server.errors import APIError, invalid
from jaxembed_server.http import json_response, notice_disconnects, parse_body, with_error_shape
from jaxembed_server.protocol import TokenId, WholeNumber
from jaxembed_server.route_embeddings import check_serving, request_deadline, run_job


class TEIError(BaseModel):
    error: str
    error_type: Literal["validation", "tokenizer", "empty", "overloaded", "unhealthy", "backend"]


class TEIEmbedRequest(BaseModel):
    """TEI's `EmbedRequest` (router/src/http/types.rs); a field it does not define is a 400 (server/fields.py)."""

    model_config = ConfigDict(extra="ignore")

    inputs: StrictStr | list[StrictStr] | list[TokenId] | list[list[TokenId]]
    normalize: StrictBool = True
    truncate: StrictBool | None = None
    truncation_direction: Literal["left", "right", "Left", "Right"] = "right"
    prompt_name: StrictStr | None = None
    dimensions: WholeNumber | None = None


class TEIEmbedSparseRequest(BaseModel):
    """TEI's `EmbedSparseRequest`, plus our pruning options."""

    model_config = ConfigDict(extra="ignore")

    inputs: StrictStr | list[StrictStr] | list[TokenId] | list[list[TokenId]]
    truncate: StrictBool | None = None
    truncation_direction: Literal["left", "right", "Left", "Right"] = "right"
    prompt_name: StrictStr | None = None
    sparse_top_k: StrictInt | None = Field(None, ge=1)
    sparse_threshold: StrictFloat | StrictInt = Field(0.0, ge=0, allow_inf_nan=False)


def tei_error(error: APIError) -> HTTPResponse:
    """An APIError in TEI's shape and statuses: input problems `validation` (413, as TEI
    answers them), an empty input `empty` (400), a full queue `overloaded` (429), an engine
    that cannot run `unhealthy` (503), a failed or timed-out computation `backend` (424)."""
    if error.status == 503:
        kind, status = ("overloaded", 429) if error.code == "overloaded" else ("unhealthy", 503)
    elif error.status >= 500:
        kind, status = "backend", 424
    elif error.code == "empty":
        kind, status = "empty", 400
    elif error.code == "not_sparse":  # TEI: a dense model has no /embed_sparse
        kind, status = "backend", 424
    elif error.reason == "invalid_json" or error.code == "unknown_field":
        kind, status = "validation", 400  # as TEI's JSON extractor: 400 for a body not JSON
    elif error.reason == "invalid_fields":  # ... and 422 for fields of the wrong type
        kind, status = "validation", 422
    else:
        kind, status = "validation", 413
    return json_response(
        {"error": error.message, "error_type": kind}, status=status, headers=error.headers
    )


def _parse(request: Request, body: type[BaseModel]):
    """(the request body, the route to the model): TEI serves one model, the first."""
    check_serving(request)
    notice_disconnects(request)
    req = parse_body(request, body)
    if isinstance(req.inputs, list) and not req.inputs:
        raise APIError(400, "`inputs` cannot be empty", param="inputs", code="empty")
    return req, request.app.ctx.models.route(None, None)


@with_error_shape(tei_error)
async def embed(request: Request) -> HTTPResponse:
    """`POST /embed` (and `POST /`): a bare list of vectors, one per input."""
    req, route = _parse(request, TEIEmbedRequest)
    options = EmbedOptions(
        truncate=bool(req.truncate),
        truncation_direction=req.truncation_direction.lower(),
        prompt_name=req.prompt_name,
        dimensions=req.dimensions,
        normalize=req.normalize,
        deadline=request_deadline(request),
    )
    result = await run_job(request, route, req.inputs, options)
    return json_response(result.vectors)


@with_error_shape(tei_error)
async def embed_sparse(request: Request) -> HTTPResponse:
    """`POST /embed_sparse`: per input, its non-zero vocabulary weights `[{"index", "value"}]`."""
    req, route = _parse(request, TEIEmbedSparseRequest)
    if not route.model.card.sparse:
        raise APIError(
            400,
            f"{route.model.name} is not a sparse (SPLADE) model: use /embed",
            param="inputs",
            code="not_sparse",
        )
    pruning = SparseOptions(req.sparse_top_k, req.sparse_threshold)
    options = EmbedOptions(
        truncate=bool(req.truncate),
        truncation_direction=req.truncation_direction.lower(),
        prompt_name=req.prompt_name,
        deadline=request_deadline(request),
    )
    result = await run_job(request, route, req.inputs, options)
    return json_response(
        [
            [{"index": int(i), "value": float(v)} for i, v in zip(s.indices, s.values, strict=True)]
            for s in to_sparse(result.vectors, pruning)
        ]
    )


@with_error_shape(tei_error)
async def embed_all(request: Request) -> HTTPResponse:
    raise invalid(
        "/embed_all (per-token hidden states) is not supported by jaxembed: its compiled "
        "programs return pooled embeddings only; use /embed",
        param="inputs",
    )


def _model_type(model) -> dict:
    """TEI's `model_type`: an embedder's pooling, or a reranker's labels."""
    if model.card.sparse:  # TEI reports SPLADE models' pooling as "splade"
        return {"embedding": {"pooling": "splade"}}
    if model.card.kind != "reranker":
        return {"embedding": {"pooling": model.card.pooling}}
    id2label = model.service.facts.id2label
    label2id = {v: int(k) for k, v in id2label.items()}
    return {"reranker": {"id2label": id2label, "label2id": label2id}}


async def info(request: Request) -> HTTPResponse:
    """`GET /info`: what TEI's clients read to size their batches."""
    ctx = request.app.ctx
    model = ctx.models.models[0]
    facts = model.service.facts
    return json_response(
        {
            "model_id": model.name,
            "model_sha": None,
            "model_dtype": facts.dtype,
            "model_type": _model_type(model),
            "max_concurrent_requests": ctx.config.max_queued_requests,
            "max_input_length": model.card.max_length,
            "max_batch_tokens": facts.token_budget,
            "max_batch_requests": None,
            "max_client_batch_size": ctx.config.max_inputs,
            "auto_truncate": False,
            "tokenization_workers": 1,
            "version": jaxembed.__version__,
            "sha": None,
            "docker_label": None,
        }
    )


def install(app) -> None:
    app.add_route(embed, "/embed", methods=["POST"], name="tei_embed")
    app.add_route(embed, "/", methods=["POST"], name="tei_root")
    app.add_route(embed_all, "/embed_all", methods=["POST"], name="tei_embed_all")
    app.add_route(embed_sparse, "/embed_sparse", methods=["POST"], name="tei_embed_sparse")
    app.add_route(info, "/info", methods=["GET"], name="tei_info")
