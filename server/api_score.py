"""vLLM's score API: `POST /v1/score` and `/score` — relevance of text pairs, in order.

`text_1` (a string, or a list) against `text_2` (a string or a list), or the newer
spelling `queries` / `documents`: one left text is paired with every right text; two
lists of the same length are paired item by item. `truncate_prompt_tokens`: -1 cuts
pairs to the model's maximum, k to k tokens (the document side is cut); unset, an
over-long pair is a 400. Answer: `{id, object: "list", created, model, data: [{index,
object: "score", score}], usage}` in pair order. Errors in OpenAI's shape, as vLLM's.
"""

from __future__ import annotations

import time
import uuid

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr
from sanic import Request
from sanic.response import HTTPResponse

from jaxembed.engine.request.jobs import ScoreJob, ScoreOptions
from jaxembed_server.api_rerank import reranker_route, score_pairs
from jaxembed_server.errors import invalid
from jaxembed_server.http import json_response, notice_disconnects, parse_body
from jaxembed_server.route_embeddings import check_serving, request_deadline

Texts = StrictStr | list[StrictStr]


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: StrictStr | None = Field(None, description="a served reranker (default: the first)")
    text_1: Texts | None = Field(None, description="one query for all of text_2, or one per pair")
    text_2: Texts | None = Field(None, description="the documents")
    queries: Texts | None = Field(None, description="another spelling of text_1")
    documents: Texts | None = Field(None, description="another spelling of text_2")
    truncate_prompt_tokens: StrictInt | None = Field(
        None, ge=-1, description="-1: cut pairs to the model's maximum; k: to k tokens"
    )
    instruction: StrictStr | None = Field(None, description="jaxembed: the task (Qwen3-Reranker)")
    priority: StrictInt = Field(0, description="jaxembed: lower is served sooner")


def _side(req: ScoreRequest, old: str, new: str) -> list[str]:
    given = [name for name in (old, new) if getattr(req, name) is not None]
    if len(given) != 1:
        raise invalid(f"give exactly one of `{old}` or `{new}`", param=old)
    value = getattr(req, given[0])
    texts = [value] if isinstance(value, str) else list(value)
    if not texts:
        raise invalid(f"`{given[0]}` must not be empty", param=given[0])
    return texts


def pairs_of(req: ScoreRequest) -> list[tuple[str, str]]:
    """vLLM's pairing: one left text against all right texts, or two lists item by item."""
    left, right = _side(req, "text_1", "queries"), _side(req, "text_2", "documents")
    if len(left) == 1:
        return [(left[0], r) for r in right]
    if len(left) != len(right):
        raise invalid(
            f"text_1 has {len(left)} texts and text_2 {len(right)}: give one text_1, or as "
            "many as text_2 (paired item by item)",
            param="text_1",
        )
    return list(zip(left, right, strict=True))


def score_options(req: ScoreRequest, request: Request) -> ScoreOptions:
    limit = req.truncate_prompt_tokens
    if limit == 0:
        raise invalid(
            "truncate_prompt_tokens must be -1 or positive", param="truncate_prompt_tokens"
        )
    return ScoreOptions(
        priority=req.priority,
        truncate=limit is not None,
        max_tokens=None if limit in (None, -1) else limit,
        instruction=req.instruction,
        deadline=request_deadline(request),
    )


async def score(request: Request) -> HTTPResponse:
    check_serving(request)
    notice_disconnects(request)
    req = parse_body(request, ScoreRequest)
    route = reranker_route(request, req.model)
    job = ScoreJob(pairs_of(req), score_options(req, request))
    result = await score_pairs(request, route, job, "text_2")
    data = [{"index": i, "object": "score", "score": float(s)} for i, s in enumerate(result.scores)]
    usage = {"prompt_tokens": result.tokens, "total_tokens": result.tokens, "completion_tokens": 0}
    return json_response(
        {
            "id": f"score-{uuid.uuid4().hex}",
            "object": "list",
            "created": int(time.time()),
            "model": route.answer,
            "data": data,
            "usage": usage,
        }
    )


def install(app) -> None:
    app.add_route(score, "/v1/score", methods=["POST"], name="score_v1")
    app.add_route(score, "/score", methods=["POST"], name="score")
