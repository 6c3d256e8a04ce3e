"""The OpenAI embeddings contract and jaxembed's extensions, as pydantic models.

Types are strict: `"1"` is not a token id and `true` is not a priority.
Unknown top-level fields are ignored, as OpenAI's API does.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, model_validator

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


EmbeddingInput = (
    StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]] | list[MultimodalItem]
)


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    input: EmbeddingInput = Field(
        description="a string, a list of strings, a list of token ids, a list of token-id lists, "
        "or a list of multimodal items"
    )
    model: StrictStr | None = Field(
        None, description="a served model name; `base:adapter` selects a LoRA adapter"
    )
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: StrictInt | None = Field(None, description="matryoshka reduction")
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
    video_frames: StrictInt | None = Field(
        None,
        ge=1,
        le=MAX_VIDEO_FRAMES,
        description="frames sampled uniformly from each video (default: the model card's)",
    )
    embedding_type: Literal["float", "int8", "uint8", "binary", "ubinary"] = Field(
        "float",
        description="quantized vectors (sentence-transformers semantics): int8/uint8 over the "
        "model's calibration ranges, (u)binary one bit per dimension packed 8 per byte; as "
        "JSON integers, or their bytes with encoding_format=base64",
    )


class EmbeddingObject(BaseModel):
    object: Literal["embedding"] = "embedding"
    embedding: list[float] | list[int] | str
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

    input: StrictStr | list[StrictStr]
    model: StrictStr | None = None
    truncate: StrictBool = False
    truncation_direction: Literal["left", "right"] = "right"
    input_type: Literal["query", "document"] | None = None
    instruction: StrictStr | None = None


class TokenizeResponse(BaseModel):
    tokens: list[list[int]]
    count: int
    max_model_len: int


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorBody
