"""vLLM's extensions of the embeddings request: chat-form `messages`, `truncate_prompt_tokens`,
`add_special_tokens`, and a clear refusal of the vLLM fields jaxembed does not implement.

A field no API defines is a 400 (server/fields.py); a field that vLLM defines and that would
change the result if we ignored it is a 400 naming it and why (listed in the README).
"""

from __future__ import annotations

from typing import Any

from jaxembed_server.errors import invalid
from jaxembed_server.protocol import EmbeddingRequest, MultimodalItem
from jaxembed_server.served import Route

# field → the values we can honour (None: none at all), and why the others are refused.
REFUSED_VLLM_FIELDS: dict[str, tuple[tuple[Any, ...], str]] = {
    "mm_processor_kwargs": ((None, {}), "multimodal processor arguments are not supported"),
    "embed_dtype": ((None, "float32"), "only float32 vectors (see embedding_type for int8/binary)"),
    "endianness": ((None, "native", "little"), "base64 vectors are little-endian"),
    "use_activation": ((None, True), "embedding models here have no activation to switch off"),
    "return_token_ids": ((None, False), "token ids are returned by POST /tokenize"),
}


def refuse_unsupported_fields(body: dict) -> None:
    for field, (accepted, why) in REFUSED_VLLM_FIELDS.items():
        if field in body and body[field] not in accepted:
            raise invalid(f"'{field}' is not supported by this server: {why}", param=field)
    if body.get("encoding_format") in ("bytes", "bytes_only"):
        raise invalid(
            "encoding_format 'bytes' is not supported: use 'float' or 'base64'",
            param="encoding_format",
        )


def check_input_or_messages(req: EmbeddingRequest) -> None:
    if req.input is None and req.messages is None:
        raise invalid("'input' is required (or `messages`)", param="input")
    if req.input is not None and req.messages is not None:
        raise invalid("give `input` or `messages`, not both", param="messages")
    for field in ("chat_template", "chat_template_kwargs"):
        if req.messages is None and getattr(req, field) is not None:
            raise invalid(f"`{field}` applies to `messages` (chat input) only", param=field)


def _parts(content: list) -> tuple[list[str], list[str], list[str]]:
    """A message's content parts → (texts, image URLs, video URLs), in order."""
    texts = [p.text for p in content if p.type == "text" and p.text is not None]
    images = [p.image_url.url for p in content if p.type == "image_url" and p.image_url]
    videos = [p.video_url.url for p in content if p.type == "video_url" and p.video_url]
    return texts, images, videos


def vision_language_chat(req: EmbeddingRequest) -> tuple[list, str | None]:
    """`messages` for a vision-language embedder (GME, Qwen3-VL-Embedding), whose recipe
    writes the chat turn itself: the system message is the instruction, the user message's
    parts the item (its texts joined as the chat template joins them; one image, one video).
    Returns ([item], instruction)."""
    system, texts, images, videos = [], [], [], []
    users = [m for m in req.messages if m.role == "user"]
    others = {m.role for m in req.messages} - {"system", "user"}
    if others or len(users) != 1:
        raise invalid(
            "a vision-language embedder takes one user message (and optionally a system "
            "message, its instruction)",
            param="messages",
        )
    for message in req.messages:
        content = message.content
        text, image, video = ([content], [], []) if isinstance(content, str) else _parts(content)
        if message.role == "user":
            texts, images, videos = texts + text, images + image, videos + video
        elif image or video:
            raise invalid("a system message holds text only", param="messages")
        else:
            system += text
    if len(images) > 1 or len(videos) > 1:
        raise invalid("messages may hold one image and one video", param="messages")
    if system and req.instruction is not None:
        raise invalid("give a system message or `instruction`, not both", param="instruction")
    if not (texts or images or videos):
        raise invalid("the user message is empty", param="messages")
    item = MultimodalItem(
        text="".join(texts) or None, image=(images or [None])[0], video=(videos or [None])[0]
    )
    return [item], "".join(system) or None


def chat_input(req: EmbeddingRequest, route: Route, *, trust_template: bool = False) -> list:
    """`messages` → one input: the rendered conversation, with its image/video (one each)
    for models that embed them. Without a chat template a multimodal model embeds the
    messages' text joined; a text model without one refuses `messages`. A request's own
    `chat_template` is rendered only when the server trusts request templates."""
    if req.chat_template is not None and not trust_template:
        raise invalid(
            "this server does not render request chat templates (start it with "
            "--trust-request-chat-template, or give the model one with --chat-template)",
            param="chat_template",
        )
    messages, images, videos = [], [], []
    for message in req.messages:
        if isinstance(message.content, str):
            messages.append({"role": message.role, "content": message.content})
            continue
        texts, image, video = _parts(message.content)
        images, videos = images + image, videos + video
        messages.append({"role": message.role, "content": "\n".join(texts)})
    if len(images) > 1 or len(videos) > 1:
        raise invalid("messages may hold one image and one video", param="messages")
    service = route.model.service
    if service.inputs.chat_template is None and req.chat_template is None and (images or videos):
        text = "\n".join(m["content"] for m in messages if m["content"]) or None
    else:
        text = service.inputs.render_messages(
            messages,
            template=req.chat_template,
            add_generation_prompt=req.add_generation_prompt,
            continue_final_message=req.continue_final_message,
            template_kwargs=req.chat_template_kwargs,
        )
    if images or videos:
        return [MultimodalItem(text=text, image=(images or [None])[0], video=(videos or [None])[0])]
    return [text]


def truncation(req: EmbeddingRequest, route: Route) -> dict:
    """EmbedOptions fields for truncate / truncate_prompt_tokens / add_special_tokens."""
    fields: dict = {"truncate": req.truncate, "truncation_direction": req.truncation_direction}
    limit = req.truncate_prompt_tokens
    maximum = route.model.card.max_length
    if limit is not None:
        if limit == 0 or limit > maximum:
            raise invalid(
                f"truncate_prompt_tokens={limit} is outside 1..{maximum} (this model's maximum; "
                "-1 means the maximum)",
                param="truncate_prompt_tokens",
            )
        fields.update(
            truncate=True,
            truncation_direction=req.truncation_side or "left",  # vLLM keeps the last tokens
            max_tokens=None if limit == -1 else limit,
        )
    # A chat template writes the special tokens itself (vLLM's default for messages: false).
    templated = req.messages is not None and (
        route.model.service.inputs.chat_template is not None or req.chat_template is not None
    )
    special = req.add_special_tokens
    fields["add_special_tokens"] = (not templated) if special is None else special
    return fields
