"""What an `EmbeddingService` is asked to do, and what it answers: plain data, no behaviour.

A job is a list of inputs plus options. Inputs are texts, token ids, or
multimodal items whose media are *already bytes* (or decoded images, from
the Python API): fetching URLs is the HTTP layer's business, not the engine's.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import numpy as np
from PIL import Image

# Texts or token ids, as `Embedder.tokenize` accepts them.
TextInputs = str | Sequence[str] | Sequence[int] | Sequence[Sequence[int]]
ImageSource = bytes | Image.Image  # encoded file bytes, or an image already decoded
VideoSource = bytes | Sequence[Image.Image]  # an encoded file, or frames already sampled


@dataclasses.dataclass(frozen=True)
class EmbedItem:
    """One multimodal input: any of text, an image and a video; one vector comes back."""

    text: str | None = None
    image: ImageSource | None = None
    video: VideoSource | None = None

    @property
    def modalities(self) -> list[str]:
        return [m for m in ("text", "image", "video") if getattr(self, m) is not None]


@dataclasses.dataclass(frozen=True)
class AdapterRef:
    """A LoRA adapter by name, with the directory to load it from if it is not resident."""

    name: str
    path: str | os.PathLike | None = None


@dataclasses.dataclass(frozen=True)
class EmbedOptions:
    """How to embed a job's inputs (defaults: the model's own behaviour)."""

    priority: int = 0  # lower = sooner (engine/scheduler.py)
    truncate: bool = False
    truncation_direction: str = "right"
    max_tokens: int | None = None  # per input, below the model's maximum (cut when truncate)
    add_special_tokens: bool = True
    prompt_name: str | None = None  # a prompt of the card, e.g. "query"
    instruction: str | None = None  # fills the card's instruction template
    dimensions: int | None = None  # matryoshka truncation
    adapter: AdapterRef | None = None
    task: str | None = None  # a built-in task adapter of the model (engine/tasks.py)
    chunking: bool = False  # over-long texts → windows pooled by token count
    video_frames: int | None = None  # frames sampled per video (None: the card's)
    # L2-normalise the vectors (None: as the card says). False for a model that normalises
    # inside its compiled program cannot be honoured and is refused.
    normalize: bool | None = None
    # float32 | int8 | uint8 | binary | ubinary (jaxembed/quantization.py), after `dimensions`.
    precision: str = "float32"
    # time.monotonic() by which the job must be done: admission refuses a job that the
    # measured device throughput cannot finish by then (None: no deadline).
    deadline: float | None = None


@dataclasses.dataclass(frozen=True)
class EmbedJob:
    """Texts/token ids (`inputs` as `Embedder.embed` takes them) or multimodal `EmbedItem`s."""

    inputs: TextInputs | Sequence[EmbedItem]
    options: EmbedOptions = EmbedOptions()

    @property
    def multimodal(self) -> bool:
        inputs = self.inputs
        return isinstance(inputs, Sequence) and bool(inputs) and isinstance(inputs[0], EmbedItem)

    @property
    def count(self) -> int:
        return 1 if isinstance(self.inputs, str) else len(self.inputs)


@dataclasses.dataclass(frozen=True)
class EmbedResult:
    """[N, D] float32 vectors in input order and the usage count: text tokens (all windows
    of a chunked input) plus image patches (frames x patches for a video)."""

    vectors: np.ndarray
    tokens: int
    # Tokens of each input, for texts and token ids (None for multimodal items).
    token_counts: list[int] | None = None


@dataclasses.dataclass(frozen=True)
class ScoreOptions:
    """How to score a job's (query, document) pairs with a reranker."""

    priority: int = 0
    truncate: bool = False  # cut documents that do not fit beside the query (else refused)
    truncation_direction: str = "right"  # the side of the document that is cut
    max_document_tokens: int | None = None  # cut every document to this many tokens first
    max_tokens: int | None = None  # most tokens of a pair, below the model's maximum
    instruction: str | None = None  # the task, for rerankers whose card has a pair template
    raw: bool = False  # the head's logits, without the card's activation
    deadline: float | None = None  # as EmbedOptions.deadline


@dataclasses.dataclass(frozen=True)
class ScoreJob:
    pairs: Sequence[tuple[str, str]]
    options: ScoreOptions = ScoreOptions()

    @classmethod
    def rerank(
        cls, query: str, documents: Sequence[str], options: ScoreOptions = ScoreOptions()
    ) -> ScoreJob:
        """One query against many documents: one set of device batches."""
        return cls([(query, d) for d in documents], options)


@dataclasses.dataclass(frozen=True)
class ScoreResult:
    """Scores in pair order: [N] for a one-label reranker, [N, labels] otherwise; `tokens`
    counts every token of every pair (template and special tokens included)."""

    scores: np.ndarray
    tokens: int
