"""Cohere's embed API: `POST /v2/embed` (and `/v1/embed`), for the `cohere` SDK and its users.

Texts, images (data URIs) or mixed `inputs`; `input_type` picks the model card's prompt
(`search_query` → its query prompt, `search_document` → its document prompt,
`classification`/`clustering` → a prompt of that name if the card has one, else none);
`embedding_types` returns one key per type (float, int8, uint8, binary, ubinary, base64:
float32 bytes); `truncate` NONE refuses over-long inputs, START drops their beginning, END
(Cohere's default) their end; `max_tokens` lowers the per-input limit; `output_dimension`
is matryoshka reduction. Errors: Cohere's body `{"id", "message"}` with 400 (bad input),
404 (unknown model), 429 (queue full), 500 or 503.
"""

from __future__ import annotations

import uuid
from typing import Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    model_validator,
)
from sanic import Request
from sanic.response import HTTPResponse

from jaxembed.engine.request.jobs import EmbedOptions
from jaxembed_server.errors import APIError, invalid
from jaxembed_server.http import (
    base64_rows,
    json_response,
    notice_disconnects,
    parse_body,
    with_error_shape,
)
from jaxembed_server.protocol import MultimodalItem, WholeNumber
from jaxembed_server.route_embeddings import check_serving, request_deadline, run_job
from jaxembed_server.served import Route

EmbeddingType = Literal["float", "int8", "uint8", "binary", "ubinary", "base64"]
TRUNCATE = {"NONE": (False, "right"), "START": (True, "left"), "END": (True, "right")}
PROMPTS = {"search_query": "query", "search_document": "document"}


class CohereError(BaseModel):
    id: str
    message: str


class ImageURL(BaseModel):
    url: StrictStr


class Content(BaseModel):
    type: Literal["text", "image_url"]
    text: StrictStr | None = None
    image_url: ImageURL | None = None

    @model_validator(mode="after")
    def _has_its_value(self) -> Content:
        if (self.type == "text") != (self.text is not None) or (self.type == "image_url") != (
            self.image_url is not None
        ):
            raise ValueError("a text part needs `text`, an image_url part `image_url`")
        return self


class CohereInput(BaseModel):
    content: list[Content] = Field(min_length=1)


class CohereEmbedRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: StrictStr | None = None
    texts: list[StrictStr] | None = None
    images: list[StrictStr] | None = None
    inputs: list[CohereInput] | None = None
    input_type: (
        Literal["search_document", "search_query", "classification", "clustering", "image"] | None
    ) = None
    embedding_types: list[EmbeddingType] | None = Field(None, min_length=1)
    truncate: Literal["NONE", "START", "END"] | None = "END"
    output_dimension: WholeNumber | None = None
    max_tokens: StrictInt | None = Field(None, ge=1)
    priority: StrictInt = 0


def cohere_error(error: APIError) -> HTTPResponse:
    if error.status == 503:
        status = 429 if error.code == "overloaded" else 503
    elif error.status >= 500:
        status = 500
    elif error.status in (401, 404):
        status = error.status
    else:
        status = 400
    body = {"id": uuid.uuid4().hex, "message": error.message}
    return json_response(body, status=status, headers=error.headers)


def inputs_of(req: CohereEmbedRequest) -> list:
    """texts → strings; images / inputs → multimodal items (text parts joined, one image)."""
    given = [name for name in ("texts", "images", "inputs") if getattr(req, name) is not None]
    if len(given) != 1:
        raise invalid("give exactly one of `texts`, `images` or `inputs`", param="texts")
    if req.texts is not None:
        return list(req.texts)
    if req.images is not None:
        return [MultimodalItem(image=uri) for uri in req.images]
    items = []
    for i, entry in enumerate(req.inputs):
        texts = [part.text for part in entry.content if part.type == "text" and part.text]
        images = [part.image_url.url for part in entry.content if part.type == "image_url"]
        if len(images) > 1 or (not texts and not images):
            raise invalid(f"inputs[{i}] needs text parts and/or one image", param="inputs")
        items.append(MultimodalItem(text=" ".join(texts) or None, image=(images or [None])[0]))
    return items


def options_of(req: CohereEmbedRequest, route: Route, request: Request) -> EmbedOptions:
    truncate, direction = TRUNCATE[req.truncate or "END"]
    prompt = PROMPTS.get(req.input_type or "")
    card = route.model.card
    if req.input_type in ("classification", "clustering") and (
        req.input_type in card.prompts or req.input_type in card.task_for_input_type
    ):
        prompt = req.input_type
    return EmbedOptions(
        priority=req.priority,
        truncate=truncate,
        truncation_direction=direction,
        max_tokens=req.max_tokens,
        prompt_name=prompt,
        adapter=route.adapter,
        dimensions=req.output_dimension,
        deadline=request_deadline(request),
    )


async def encoded(route: Route, vectors: np.ndarray, types: list[str]) -> dict:
    """One entry per requested type, as Cohere names them."""
    out: dict = {}
    for kind in dict.fromkeys(types):
        if kind == "float":
            out["float"] = vectors
        elif kind == "base64":
            out["base64"] = base64_rows(vectors)
        else:
            out[kind] = await route.model.service.encode(vectors, kind)
    return out


async def _embed(request: Request, by_type_default: bool) -> HTTPResponse:
    check_serving(request)
    notice_disconnects(request)
    req = parse_body(request, CohereEmbedRequest)
    route = request.app.ctx.models.route(req.model, None)
    inputs = inputs_of(req)
    result = await run_job(request, route, inputs, options_of(req, route, request))
    meta = {
        "api_version": {"version": "2" if by_type_default else "1"},
        "billed_units": {"input_tokens": result.tokens},
    }
    body = {"id": uuid.uuid4().hex, "texts": req.texts or [], "meta": meta}
    if req.embedding_types is None and not by_type_default:  # v1 without types: floats
        return json_response(
            {**body, "embeddings": result.vectors, "response_type": "embeddings_floats"}
        )
    embeddings = await encoded(route, result.vectors, req.embedding_types or ["float"])
    return json_response({**body, "embeddings": embeddings, "response_type": "embeddings_by_type"})


@with_error_shape(cohere_error)
async def embed_v2(request: Request) -> HTTPResponse:
    return await _embed(request, by_type_default=True)


@with_error_shape(cohere_error)
async def embed_v1(request: Request) -> HTTPResponse:
    return await _embed(request, by_type_default=False)


def install(app) -> None:
    app.add_route(embed_v2, "/v2/embed", methods=["POST"], name="cohere_embed_v2")
    app.add_route(embed_v1, "/v1/embed", methods=["POST"], name="cohere_embed_v1")
