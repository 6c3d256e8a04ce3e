"""`Embedder`: the synchronous in-process API — texts or token ids in, an [N, D] float32 array out.

Inputs of any count are split into bucket batches sorted by length, all
batches are dispatched before any result is read (so padding batch n+1 on the
host overlaps the device running batch n), and rows come back in input order.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import jax
import numpy as np
from jax.sharding import Mesh
from PIL import Image

from jaxembed.card import ModelCard
from jaxembed.engine.buckets import (
    DEFAULT_BATCH_SIZES,
    DEFAULT_TOKEN_BUDGET,
    DEFAULT_WARMUP_MAX_LEN,
    Bucket,
    BucketGrid,
    PlannedBatch,
    pad_batch,
    pad_packed,
    plan_batches,
    plan_packed,
)
from jaxembed.engine.chat import ChatTemplate
from jaxembed.engine.chunking import MAX_EMBED_FACTOR, ChunkPlan
from jaxembed.engine.compile_cache import enable_compile_cache
from jaxembed.engine.jobs import AdapterRef, EmbedItem, EmbedJob, EmbedOptions
from jaxembed.engine.memory import fit_grid
from jaxembed.engine.pairs import PairTokenizer
from jaxembed.engine.qwen_vl import QwenVLEngine
from jaxembed.engine.runner import BucketRunner
from jaxembed.engine.tokenize import TextTokenizer
from jaxembed.engine.vision import ImageEngine
from jaxembed.engine.workload import DeviceResult
from jaxembed.errors import InvalidInputError, ModelLoadError
from jaxembed.lora import AdapterError, LoraAdapter, LoraBank, TaskAdapters, load_adapter
from jaxembed.models.attention import AttentionConfig, unavailable_reason
from jaxembed.parallel.mesh import MeshShape, make_mesh
from jaxembed.parallel.sharding import DATA_AXIS, replicated
from jaxembed.pooling import PACKABLE_POOLING
from jaxembed.weights.loader import LoadedModel, load_model

T = TypeVar("T")
Inputs = str | Sequence[str] | Sequence[int] | Sequence[Sequence[int]]
# Input types every model accepts; a card without a prompt for one means "no prefix".
STANDARD_INPUT_TYPES = ("query", "document")


def default_token_budget() -> int:
    return DEFAULT_TOKEN_BUDGET.get(jax.default_backend(), DEFAULT_TOKEN_BUDGET["gpu"])


def data_parallel_grid_options(
    data: int, token_budget: int, batch_sizes: Sequence[int]
) -> tuple[int, tuple[int, ...]]:
    """Budget and batch sizes for a batch split over `data` devices.

    The token budget is per data shard (what one device computes at once), so
    a batch may hold `data` times as many tokens, and every batch size must be a
    multiple of `data` so each device gets the same number of rows.
    """
    sizes = tuple(sorted({-(-b // data) * data for b in batch_sizes}))
    return token_budget * data, sizes


def classify_inputs(inputs: Inputs) -> tuple[str, list]:
    """("text", [str, ...]) or ("tokens", [[int, ...], ...]); anything else is invalid input."""
    if isinstance(inputs, str):
        return "text", [inputs]
    if not isinstance(inputs, Sequence | np.ndarray) or len(inputs) == 0:
        raise InvalidInputError("input must be a string or a non-empty list")
    items = list(inputs)
    if all(isinstance(x, str) for x in items):
        return "text", items
    if all(isinstance(x, int | np.integer) and not isinstance(x, bool) for x in items):
        return "tokens", [items]
    if all(isinstance(x, Sequence | np.ndarray) and not isinstance(x, str) for x in items):
        return "tokens", [list(x) for x in items]
    raise InvalidInputError(
        "input must be a string, a list of strings, a list of token ids or a list of token-id lists"
    )


class Embedder:
    def __init__(
        self,
        model: LoadedModel,
        *,
        token_budget: int | None = None,
        batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
        seq_lengths: Sequence[int] | None = None,
        packing: bool | None = None,
        attention: AttentionConfig | str | None = None,
        warmup_max_len: int = DEFAULT_WARMUP_MAX_LEN,
        max_embed_len: int | None = None,
    ):
        """`packing`: several short inputs share a row of a batch (None: wherever the model
        family and pooling allow it; see `can_pack`).

        `attention`: the attention implementation (models/attention.py; default `auto`,
        chosen per backend and bucket). `warmup_max_len`: warm-up compiles the buckets up
        to this length; longer ones compile on first use. `max_embed_len`: most tokens of
        one input embedded with `chunking` (default 16x the model's maximum).
        """
        if attention is not None:
            config = AttentionConfig(attention) if isinstance(attention, str) else attention
            model = model.with_attention(config)
        if not model.attention.interpret:
            reason = unavailable_reason(model.attention.impl)
            if reason:
                raise ModelLoadError(f"{reason}; use --attention auto, xla or blocked")
        self.warmup_max_len = warmup_max_len
        self.max_embed_len = max_embed_len or MAX_EMBED_FACTOR * model.card.max_length
        self.model = model
        self.card: ModelCard = model.card
        eos_id = getattr(model.config, "eos_token_id", None) if model.card.append_eos else None
        self.pad_id = int(getattr(model.config, "pad_token_id", 0))
        self.tokenizer = TextTokenizer(
            model.model_dir,
            model.card.max_length,
            eos_id=eos_id,
            pad_to_max_length=model.card.pad_to_max_length,
            pad_id=self.pad_id,
        )
        self.pairs = (
            PairTokenizer(self.tokenizer.backend, model.card, model.config)
            if model.card.kind == "reranker"
            else None
        )
        budget, sizes = data_parallel_grid_options(
            model.mesh.shape[DATA_AXIS], token_budget or default_token_budget(), batch_sizes
        )
        self.grid = BucketGrid.for_max_length(
            model.card.max_length, budget, batch_sizes=sizes, seq_lengths=seq_lengths
        )
        self.runner = BucketRunner(
            model.module(),
            model.params,
            pooling=model.card.pooling,
            normalize=model.card.normalize,
            grid=self.grid,
            mesh=model.mesh,
        )
        self.packing = False
        self.set_packing(self.can_pack if packing is None else packing)
        if model.card.tasks:
            self.enable_lora()  # the model's own task adapters: resident from the start
        self._service = self._loop = None  # built by `service()` on first use
        self.chat_template = ChatTemplate.from_model_dir(Path(model.model_dir))
        self.images: ImageEngine | None = None
        # A vision-language decoder (GME-Qwen2-VL) embeds every item through its own engine.
        self.fused = QwenVLEngine(model, self.tokenizer.backend) if model.card.vl_template else None
        if self.fused is None and (
            "image" in model.card.modalities or "video" in model.card.modalities
        ):
            if not hasattr(model.module(), "encode_image"):
                raise ModelLoadError(
                    f"card {model.card.name!r} lists image/video inputs but its architecture "
                    f"({model.card.family}) has no vision tower"
                )
            self.images = ImageEngine(model, token_budget=budget)

    @classmethod
    def from_pretrained(
        cls,
        spec: str | os.PathLike | None = None,
        *,
        dtype: str | None = None,
        mesh: Mesh | MeshShape | None = None,
        compile_cache_dir: str | os.PathLike | bool | None = None,
        warmup: bool = False,
        warmup_progress: Callable[[int, int, Bucket], None] | None = None,
        **grid_options,
    ) -> Embedder:
        """Load `spec` (directory or card name; None = embedded default) and build its engine.

        `mesh`: a mesh, or a shape for one over all devices (default: one device).
        `compile_cache_dir=False` leaves JAX's persistent cache alone; None uses the default directory.
        """
        if compile_cache_dir is not False:
            enable_compile_cache(None if compile_cache_dir is True else compile_cache_dir)
        if isinstance(mesh, MeshShape):
            mesh = make_mesh(mesh)
        embedder = cls(load_model(spec, dtype=dtype, mesh=mesh), **grid_options)
        if warmup:
            embedder.runner.warmup(warmup_progress, embedder.warmup_max_len)
            if embedder.images is not None:
                embedder.images.warmup(warmup_progress)
        return embedder

    # -- packing ------------------------------------------------------------------------------

    @property
    def can_pack(self) -> bool:
        """Whether this model's module and pooling work on packed rows (text families; not
        a model with built-in task adapters, which apply per row)."""
        return (
            self.model.family.packable
            and self.card.pooling in PACKABLE_POOLING
            and not self.card.tasks
        )

    def set_packing(self, on: bool) -> None:
        """Pack short inputs into shared rows (or not); call before warm-up."""
        if on and not self.can_pack:
            raise ValueError(
                f"{self.card.name} cannot pack rows ({self.card.family}, {self.card.pooling} pooling)"
            )
        self.packing = on
        self.runner.packed = on

    # -- device memory ------------------------------------------------------------------------

    def fit_memory(self, budget_bytes: int) -> BucketGrid:
        """Shrink the batch of any bucket whose compiled program needs more than `budget_bytes`
        per device (parameters included); a length that fits no batch is a ModelLoadError.

        Checks every length warm-up compiles and the model's maximum (longer lazy buckets
        hold about as many tokens as their neighbours: the budget caps rows x length).
        """
        lengths = [s for s in self.grid.seq_lengths if s <= self.warmup_max_len]
        self.grid = fit_grid(self.runner, budget_bytes, [*lengths, self.grid.max_length])
        return self.grid

    # -- LoRA adapters ----------------------------------------------------------------------

    @property
    def lora_bank(self) -> LoraBank | TaskAdapters | None:
        return self.runner.lora_bank

    def enable_lora(self, *, max_loras: int = 8, max_rank: int = 64) -> LoraBank | TaskAdapters:
        """Reserve `max_loras` adapter slots of rank ≤ `max_rank` on the devices; a model with
        built-in task adapters (card `tasks`) serves those, and only those."""
        if self.card.tasks:
            if self.runner.lora_bank is None:
                self.set_packing(False)  # a task applies per row, and rows are not shared
                self.runner.lora_bank = TaskAdapters(self.card.tasks, self.card.name)
            return self.runner.lora_bank
        if self.images is not None or self.card.kind != "embedding":
            what = "rerankers" if self.card.kind == "reranker" else f"{self.card.family} models"
            raise AdapterError(f"LoRA adapters are not supported for {what}")
        if self.runner.lora_bank is None:
            self.set_packing(False)  # an adapter applies per row, and rows are not shared
            self.runner.lora_bank = LoraBank(
                self.model.config,
                max_loras=max_loras,
                max_rank=max_rank,
                dtype=self.model.dtype,
                sharding=replicated(self.model.mesh),
            )
        return self.runner.lora_bank

    def adapter_slot(self, name: str, path: str | os.PathLike | None = None) -> int:
        """The slot of adapter `name` (loading it from `path` if it is not resident), pinned.

        Call `lora_bank.release(name)` when the rows using it are done; an adapter
        loaded here and never released stays resident (a preloaded adapter).
        """
        bank = self.lora_bank or self.enable_lora()

        def load() -> LoraAdapter:
            if path is None:
                raise AdapterError(f"unknown adapter {name!r}")
            return load_adapter(path, self.model.config, name=name, max_rank=bank.max_rank)

        return bank.acquire(name, load)

    def unhealthy_reason(self) -> str | None:
        """Why the engine cannot serve now (e.g. a lost follower host), or None."""
        return self.runner.unhealthy_reason()

    @property
    def dimensions(self) -> int:
        return self.card.dimensions

    @property
    def max_length(self) -> int:
        return self.card.max_length

    def check_dimensions(self, dimensions: int | None) -> None:
        if dimensions is None:
            return
        if isinstance(dimensions, bool) or not isinstance(dimensions, int | np.integer):
            raise InvalidInputError("dimensions must be an integer", param="dimensions")
        if not self.card.allows_dimensions(int(dimensions)):
            allowed = (
                f"one of {sorted({*self.card.matryoshka_dims, self.dimensions})}"
                if self.card.matryoshka_dims
                else f"between 1 and {self.dimensions}"
            )
            raise InvalidInputError(
                f"dimensions={dimensions} is not supported by {self.card.name}: use {allowed}",
                param="dimensions",
            )

    def check_instruction(self, instruction: str | None) -> None:
        """An instruction is an error for a model without a template, whatever the input."""
        if instruction is not None and not (
            self.card.instruction_template or self.card.vl_template
        ):
            raise InvalidInputError(
                f"{self.card.name} takes no instructions (its card has no instruction template)",
                param="instruction",
            )

    def vl_instruction(self, prompt_name: str | None, instruction: str | None) -> str | None:
        """A vision-language model's instruction: the request's own, else its input type's
        (the card's prompts: a query's retrieval instruction), else None — the recipe's
        default, which documents get."""
        return instruction if instruction is not None else self.named_prompt(prompt_name)

    def named_prompt(self, prompt_name: str | None) -> str | None:
        """The card's prompt called `prompt_name`; None for no name, or for a standard input
        type the card has no prompt for (documents of a model that only prompts queries)."""
        if prompt_name is None or (
            prompt_name in STANDARD_INPUT_TYPES and prompt_name not in self.card.prompts
        ):
            return None
        if prompt_name not in self.card.prompts:
            known = sorted(self.card.prompts) or "none"
            raise InvalidInputError(
                f"{self.card.name} has no prompt {prompt_name!r} (prompts: {known})",
                param="input_type",
            )
        return self.card.prompts[prompt_name]

    def render_messages(self, messages: list[dict], **flags) -> str:
        """A chat conversation → the one text to embed (the model's chat template)."""
        if self.chat_template is None:
            raise InvalidInputError(
                f"{self.card.name} has no chat template (tokenizer_config.json / "
                "chat_template.jinja): send `input` instead of `messages`",
                param="messages",
            )
        return self.chat_template.render(messages, **flags)

    def apply_prompt(
        self, texts: Sequence[str], prompt_name: str | None, instruction: str | None = None
    ) -> list[str]:
        """Prefix texts with the card's named prompt, or with `instruction` in the card's template."""
        if instruction is not None:
            self.check_instruction(instruction)
            prefix = self.card.instruction_template.format(instruction=instruction)
            return [prefix + t for t in texts]
        prefix = self.named_prompt(prompt_name)
        return list(texts) if prefix is None else [prefix + t for t in texts]

    def tokenize(
        self,
        inputs: Inputs,
        *,
        truncate: bool = False,
        truncation_direction: str = "right",
        prompt_name: str | None = None,
        instruction: str | None = None,
        max_tokens: int | None = None,
        add_special_tokens: bool = True,
    ) -> list[np.ndarray]:
        """Token ids per input (texts through the tokenizer, token ids validated as they are).

        Prompts and instructions apply to texts only: token ids are used exactly as given
        (an instruction the model cannot take is refused for them too). `max_tokens` lowers
        the per-input limit below the model's maximum (`truncate` cuts to it).
        """
        self.check_instruction(instruction)
        kind, items = classify_inputs(inputs)
        if kind == "text":
            return self.tokenizer.encode(
                self.apply_prompt(items, prompt_name, instruction),
                truncate=truncate,
                direction=truncation_direction,
                max_tokens=max_tokens,
                add_special_tokens=add_special_tokens,
            )
        return self.tokenizer.check_ids(
            items, truncate=truncate, direction=truncation_direction, max_tokens=max_tokens
        )

    def tokenize_windows(
        self,
        inputs: Inputs,
        *,
        prompt_name: str | None = None,
        instruction: str | None = None,
    ) -> ChunkPlan:
        """Like `tokenize`, but an input longer than the model becomes several windows
        (jaxembed/engine/chunking.py); at most `max_embed_len` tokens per input."""
        self.check_instruction(instruction)
        kind, items = classify_inputs(inputs)
        if kind == "text":
            texts = self.apply_prompt(items, prompt_name, instruction)
            windows = self.tokenizer.encode_windows(texts, max_tokens=self.max_embed_len)
        else:
            windows = self.tokenizer.check_id_windows(items, max_tokens=self.max_embed_len)
        return ChunkPlan.from_windows(windows)

    def dispatch(
        self,
        token_lists: Sequence[np.ndarray],
        planned: PlannedBatch,
        adapter_slots: np.ndarray | None = None,
    ) -> DeviceResult:
        """Pad one planned batch and dispatch it (no waiting).

        `adapter_slots`: a LoRA slot per input (in `token_lists` order), or None. Only
        unpacked batches take them (an adapter applies per row; `enable_lora` turns packing off).
        """
        if planned.packed:
            if adapter_slots is not None:
                raise ValueError("LoRA adapters apply per row; packed rows cannot carry them")
            ids, segments = pad_packed(token_lists, planned, self.pad_id)
            array = self.runner.run_packed(ids, segments)
            return DeviceResult(array, len(token_lists), planned.rows, planned.segments)
        ids, mask = pad_batch(token_lists, planned.bucket, self.pad_id)
        row_slots = None
        if adapter_slots is not None:  # padding rows run the base model (slot 0)
            row_slots = np.zeros(planned.bucket.batch, dtype=np.int32)
            row_slots[: len(token_lists)] = adapter_slots
        return DeviceResult(self.runner.run(ids, mask, row_slots), len(token_lists))

    def plan(self, token_lists: Sequence[np.ndarray], packing: bool | None = None):
        packing = self.packing if packing is None else packing
        return (plan_packed if packing else plan_batches)([len(t) for t in token_lists], self.grid)

    def embed_token_lists(
        self, token_lists: Sequence[np.ndarray], adapter_slots: Sequence[int] | None = None
    ) -> np.ndarray:
        """Embeddings of already-validated token id arrays, [N, D] float32 in input order.

        `adapter_slots`: a LoRA slot per row (0 = base); rows of different adapters share
        batches (unpacked: an adapter applies to a whole row).
        """
        out = np.empty((len(token_lists), self.dimensions), dtype=np.float32)
        slots = None if adapter_slots is None else np.asarray(adapter_slots, dtype=np.int32)
        pending = []
        for planned in self.plan(token_lists, packing=self.packing and slots is None):
            batch = [token_lists[i] for i in planned.indices]
            batch_slots = None if slots is None else slots[planned.indices]
            pending.append((planned.indices, self.dispatch(batch, planned, batch_slots)))
        for indices, result in pending:
            out[indices] = result.read()
        return out

    # -- the synchronous API over the embedding service ---------------------------------------

    def service(self):
        """The `EmbeddingService` that `embed`, `embed_images` and `embed_video` run on (built
        on first use, on a background event loop): the same pipeline the server runs."""
        if self._service is None:
            from jaxembed.engine.aio import BackgroundLoop
            from jaxembed.engine.service import EmbeddingService, QueueLimits, ServiceConfig

            unbounded = QueueLimits(max_queued_requests=2**62, max_queued_tokens=2**62)
            self._service = EmbeddingService(self, ServiceConfig(queue=unbounded))
            self._service.start(warmup=False)  # buckets compile on first use, as before
            self._loop = BackgroundLoop()
        return self._service

    def close(self) -> None:
        """Stop the background service of `embed` (if it was started); the engine stays usable."""
        if self._service is not None:
            self._service.close(timeout=5)
            self._loop.close()
            self._service = self._loop = None

    def call_service(self, call: Callable[[Any], Awaitable[T]]) -> T:
        """Run `call(service)` (a coroutine on this model's service) to completion from
        synchronous code; what `embed` and `Reranker.score` are made of."""
        service = self.service()
        return self._loop.run(call(service))

    def _run_job(self, inputs, **options) -> np.ndarray:
        job = EmbedJob(inputs, EmbedOptions(**options))
        return self.call_service(lambda service: service.embed(job)).vectors

    def embed(
        self,
        inputs: Inputs,
        *,
        truncate: bool = False,
        truncation_direction: str = "right",
        dimensions: int | None = None,
        prompt_name: str | None = None,
        instruction: str | None = None,
        adapter: str | None = None,
        task: str | None = None,
        chunking: bool = False,
        priority: int = 0,
        precision: str = "float32",
    ) -> np.ndarray:
        """Embed texts or token ids → [N, dimensions] float32, rows in input order.

        `prompt_name` picks a prompt of the card (e.g. "query"); `instruction`
        instead fills the card's instruction template (decoder embedders);
        `adapter` names a LoRA adapter loaded with `adapter_slot`; `task` one of the
        model's built-in task adapters with its prompt (jina-v3); `chunking` embeds
        an over-long input as windows pooled by token count (instead of `truncate`);
        `precision` int8/uint8/binary/ubinary quantizes (jaxembed/quantization.py).
        Thread-safe: concurrent calls share device batches, as requests do in the server.
        """
        return self._run_job(
            inputs,
            truncate=truncate,
            truncation_direction=truncation_direction,
            dimensions=dimensions,
            prompt_name=prompt_name,
            instruction=instruction,
            adapter=None if adapter is None else AdapterRef(adapter),
            task=task,
            chunking=chunking,
            priority=priority,
            precision=precision,
        )

    # -- images and videos (models with a vision tower) ----------------------------------------

    def embed_items(self, items: Sequence, *, dimensions: int | None = None, **options):
        """Multimodal items (`jaxembed.engine.jobs.EmbedItem`: text, image and/or video; images
        and videos as bytes or decoded) → [N, dimensions], one fused vector per item.
        `options`: further `EmbedOptions` fields (e.g. video_frames, prompt_name)."""
        return self._run_job(list(items), dimensions=dimensions, **options)

    def embed_images(
        self, images: Sequence[Image.Image | bytes], *, dimensions: int | None = None
    ) -> np.ndarray:
        """Images (decoded, any size or mode, or encoded file bytes) → [N, dimensions] float32."""
        return self._run_job([EmbedItem(image=image) for image in images], dimensions=dimensions)

    def embed_video(
        self,
        video: Sequence[Image.Image] | bytes,
        *,
        dimensions: int | None = None,
        frames: int | None = None,
    ) -> np.ndarray:
        """One video (sampled frames, or an encoded file sampled to `frames`, default the
        card's) → one [dimensions] vector: the mean frame embedding — or, for a
        vision-language model, the video read through its decoder (a file sampled as its
        recipe says, `frames` capping the count; frames given are taken as sampled at the
        recipe's rate)."""
        item = EmbedItem(video=video if isinstance(video, bytes) else list(video))
        return self._run_job([item], dimensions=dimensions, video_frames=frames)[0]
