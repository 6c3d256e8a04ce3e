"""The OpenAI embeddings contract and jaxembed's extensions, as pydantic models.

Types are strict: `"1"` is not a token id and `true` is not a priority.
A top-level field no model defines is a 400 naming it, as OpenAI answers (server/fields.py).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    model_validator,
)

from jaxembed.card import MAX_VIDEO_FRAMES


class MultimodalItem(BaseModel):
    """One item of a multimodal input; it yields one embedding."""

    model_config = ConfigDict(extra="forbid")

    text: StrictStr | None = None
    image: StrictStr | None = Field(None, description="http(s) URL, file path, base64 or data URI")
    video: StrictStr | None = Field(None, description="http(s) URL, file path, base64 or data URI")

    @model_validator(mode="after")
    def _not_empty(self) -> MultimodalItem:
        if self.text is None and self.image is None and self.video is None:
            raise ValueError("a multimodal item needs at least one of text, image, video")
        return self

    @property
    def modalities(self) -> list[str]:
        return [m for m in ("text", "image", "video") if getattr(self, m) is not None]


def _integer_past_64_bits(value: object) -> object:
    """orjson reads an integer literal past 64 bits as a float; in a list of token ids it is
    such an id, outside every vocabulary (the tokenizer's usual 400), not a malformed input."""
    if isinstance(value, float) and value.is_integer() and abs(value) >= 2**63:
        return int(value)
    return value


TokenId = Annotated[StrictInt, BeforeValidator(_integer_past_64_bits)]


def _integral_float(value: object) -> object:
    """64.0 is 64 (JavaScript clients and some JSON encoders write whole numbers so); 64.5
    stays a float and is refused."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# A count or size: an integer, or a float with nothing after the point.
WholeNumber = Annotated[StrictInt, BeforeValidator(_integral_float)]

EmbeddingInput = (
    StrictStr | list[StrictStr] | list[TokenId] | list[list[TokenId]] | list[MultimodalItem]
)


class MediaURL(BaseModel):
    url: StrictStr


class ContentPart(BaseModel):
    """A part of a chat message (vLLM / OpenAI chat shape)."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["text", "image_url", "video_url"]
    text: StrictStr | None = None
    image_url: MediaURL | None = None
    video_url: MediaURL | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: StrictStr
    content: StrictStr | list[ContentPart]


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    # vLLM's fields that vllm_fields.py checks (a value we cannot honour is a 400), and vLLM's
    # bookkeeping fields that change nothing here (the X-Request-Id header names a request).
    peer_fields: ClassVar[frozenset[str]] = frozenset(
        {
            "mm_processor_kwargs",
            "embed_dtype",
            "endianness",
            "use_activation",
            "return_token_ids",
            "request_id",
            "cache_salt",
        }
    )

    input: EmbeddingInput | None = Field(
        None,
        description="a string, a list of strings, a list of token ids, a list of token-id lists, "
        "or a list of multimodal items (required unless `messages` is given)",
    )
    messages: list[ChatMessage] | None = Field(
        None,
        min_length=1,
        description="vLLM: a conversation rendered by the model's chat template into one input",
    )
    add_generation_prompt: StrictBool = False
    continue_final_message: StrictBool = False
    chat_template: StrictStr | None = Field(
        None,
        description="vLLM: a Jinja template for `messages` instead of the model's (needs the "
        "server's --trust-request-chat-template)",
    )
    chat_template_kwargs: dict[str, Any] | None = Field(
        None, description="vLLM: more variables for the chat template (e.g. enable_thinking)"
    )
    truncate_prompt_tokens: StrictInt | None = Field(
        None, ge=-1, description="vLLM: keep at most this many tokens per input (-1: the maximum)"
    )
    truncation_side: Literal["left", "right"] | None = Field(
        None, description="vLLM: with truncate_prompt_tokens, left keeps the last tokens (default)"
    )
    add_special_tokens: StrictBool | None = Field(
        None,
        description="vLLM: add the tokenizer's special tokens (default: true for input, "
        "false for messages, whose template has them)",
    )
    normalize: StrictBool | None = Field(None, description="L2-normalise (default: the card's)")
    model: StrictStr | None = Field(
        None, description="a served model name; `base:adapter` selects a LoRA adapter"
    )
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: WholeNumber | None = Field(None, description="matryoshka reduction")
    user: StrictStr | None = None
    # Extensions.
    priority: StrictInt = Field(0, ge=-(2**31), le=2**31 - 1, description="lower is served sooner")
    lora_path: StrictStr | None = None
    truncate: StrictBool = Field(False, description="truncate over-long inputs instead of a 400")
    truncation_direction: Literal["left", "right"] = "right"
    chunking: StrictBool | None = Field(
        None,
        description="embed over-long inputs as windows of the model's length and return their "
        "token-weighted mean (default: the server's --chunking)",
    )
    input_type: Literal["query", "document"] | None = Field(
        None, description="applies the card's prompt of that name (e.g. a query instruction)"
    )
    instruction: StrictStr | None = Field(
        None, description="a task instruction put into the card's instruction template (queries)"
    )
    task: StrictStr | None = Field(
        None,
        description="one of the model's built-in task adapters, with its prompt "
        "(jina-embeddings-v3: retrieval.query, retrieval.passage, separation, classification, "
        "text-matching)",
    )
    video_frames: StrictInt | None = Field(
        None,
        ge=1,
        le=MAX_VIDEO_FRAMES,
        description="frames sampled uniformly from each video (default: the model card's)",
    )
    embedding_type: Literal["float", "int8", "uint8", "binary", "ubinary", "sparse"] = Field(
        "float",
        description="quantized vectors (sentence-transformers semantics): int8/uint8 over the "
        "model's calibration ranges, (u)binary one bit per dimension packed 8 per byte; as "
        "JSON integers, or their bytes with encoding_format=base64. `sparse` (SPLADE models): "
        "each embedding is {indices, values}, the non-zero vocabulary weights",
    )
    sparse_top_k: StrictInt | None = Field(
        None, ge=1, description="sparse: keep only the k largest weights of each vector"
    )
    sparse_threshold: StrictFloat | StrictInt = Field(
        0.0, ge=0, allow_inf_nan=False, description="sparse: keep only weights above this"
    )


class SparseEmbedding(BaseModel):
    indices: list[int] = Field(description="vocabulary ids, ascending")
    values: list[float]


class EmbeddingObject(BaseModel):
    object: Literal["embedding"] = "embedding"
    embedding: list[float] | list[int] | str | SparseEmbedding
    index: int


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingObject]
    model: str
    usage: Usage


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    peer_fields: ClassVar[frozenset[str]] = frozenset({"request_id"})  # vLLM's bookkeeping

    input: StrictStr | list[StrictStr] | None = None
    prompt: StrictStr | None = Field(None, description="vLLM's form: one text, flat `tokens`")
    messages: list[ChatMessage] | None = Field(None, min_length=1)
    chat_template: StrictStr | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    add_special_tokens: StrictBool | None = None
    add_generation_prompt: StrictBool = False
    continue_final_message: StrictBool = False
    model: StrictStr | None = None
    truncate: StrictBool = False
    truncation_direction: Literal["left", "right"] = "right"
    input_type: Literal["query", "document"] | None = None
    instruction: StrictStr | None = None


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    tokens: list[TokenId] = Field(min_length=1)
    model: StrictStr | None = None


class TokenizeResponse(BaseModel):
    tokens: list[list[int]] | list[int]
    count: int
    max_model_len: int


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorBody
