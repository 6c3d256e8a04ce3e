"""`POST /tokenize` and `POST /detokenize`: the ids a text becomes, and back.

Two request forms: ours (`input`: a text or texts → `tokens` as a list per text) and vLLM's
(`prompt`: one text, or chat `messages` → `tokens` as one flat list, as vLLM answers).
"""

from __future__ import annotations

from sanic import Request

from jaxembed.engine.request.jobs import EmbedOptions
from jaxembed_server.errors import invalid
from jaxembed_server.http import json_response, parse_body
from jaxembed_server.protocol import DetokenizeRequest, EmbeddingRequest, TokenizeRequest
from jaxembed_server.route_embeddings import check_size
from jaxembed_server.served import Route
from jaxembed_server.vllm_fields import chat_input


def _text_of(
    req: TokenizeRequest, route: Route, trust: bool = False
) -> tuple[str | list[str], bool]:
    """(what to tokenize, whether the answer is vLLM's flat form)."""
    given = [f for f in ("input", "prompt", "messages") if getattr(req, f) is not None]
    if len(given) != 1:
        raise invalid("give one of `input`, `prompt` or `messages`", param="input")
    if req.messages is not None:
        chat = EmbeddingRequest(
            messages=req.messages,
            add_generation_prompt=req.add_generation_prompt,
            continue_final_message=req.continue_final_message,
            chat_template=req.chat_template,
            chat_template_kwargs=req.chat_template_kwargs,
        )
        (text,) = chat_input(chat, route, trust_template=trust)
        if not isinstance(text, str):
            raise invalid("/tokenize takes text-only messages", param="messages")
        return text, True
    return (req.prompt, True) if req.prompt is not None else (req.input, False)


async def tokenize(request: Request):
    ctx = request.app.ctx
    req = parse_body(request, TokenizeRequest)
    model, answer, _ = ctx.models.find(req.model)  # an adapter does not change tokenisation
    route = Route(model, answer, None)
    text, flat = _text_of(req, route, ctx.config.trust_request_chat_template)
    check_size(text, ctx.config.max_inputs)
    special = req.add_special_tokens
    options = EmbedOptions(
        truncate=req.truncate,
        truncation_direction=req.truncation_direction,
        prompt_name=req.input_type,
        instruction=req.instruction,
        add_special_tokens=(req.messages is None) if special is None else special,
    )
    token_lists = await route.model.service.tokenize(text, options)
    tokens = [t.tolist() for t in token_lists]
    return json_response(
        {
            "tokens": tokens[0] if flat else tokens,
            "count": sum(len(t) for t in token_lists),
            "max_model_len": route.model.card.max_length,
        }
    )


async def detokenize(request: Request):
    ctx = request.app.ctx
    req = parse_body(request, DetokenizeRequest)
    model, _, _ = ctx.models.find(req.model)
    tokenizer = model.service.inputs.tokenizer
    if (bad := tokenizer.outside_vocabulary(req.tokens)) is not None:
        raise invalid(
            f"token id {bad} is outside the vocabulary (0..{tokenizer.vocab_size - 1})",
            param="tokens",
        )
    return json_response({"prompt": tokenizer.decode(req.tokens)})
