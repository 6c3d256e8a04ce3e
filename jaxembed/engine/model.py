"""`EngineModel`: one loaded model ready to run — its inputs side (tokenizer, prompts), its
(batch, length) grid and compiled runner, packing, LoRA slots, and the image or
vision-language engines of models that have them. `TextWorkload` puts its token rows
through a Batcher. The synchronous `Embedder` API (jaxembed/api.py) is built on top.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from jaxembed.engine.batching.buckets import (
    DEFAULT_BATCH_SIZES,
    DEFAULT_WARMUP_MAX_LEN,
    PACKED_BATCH_SIZES,
    Bucket,
    BucketGrid,
    PlannedBatch,
    data_parallel_grid_options,
    default_token_budget,
    packed_seq_lengths,
    pad_batch,
    pad_packed,
    plan_batches,
    plan_packed,
)
from jaxembed.engine.batching.workload import DeviceResult, Workload
from jaxembed.engine.device.compile_cache import enable_compile_cache
from jaxembed.engine.device.memory import fit_grid
from jaxembed.engine.device.runner import BucketRunner, Runner
from jaxembed.engine.inputs.pairs import TokenTypes
from jaxembed.engine.inputs.text import ModelInputs
from jaxembed.engine.workloads.qwen_vl import QwenVLEngine
from jaxembed.engine.workloads.vision import ImageEngine
from jaxembed.errors import ModelLoadError
from jaxembed.lora import AdapterError, LoraAdapter, LoraBank, TaskAdapters, load_adapter
from jaxembed.models.attention import AttentionConfig, unavailable_reason
from jaxembed.parallel.mesh import MeshShape, make_mesh
from jaxembed.parallel.sharding import DATA_AXIS, replicated
from jaxembed.pooling import PACKABLE_POOLING
from jaxembed.weights.loader import LoadedModel, load_model


def _with_attention(model: LoadedModel, attention: AttentionConfig | str | None) -> LoadedModel:
    """`model` run by `attention` (None: as loaded), refused where that kernel cannot run."""
    if attention is not None:
        config = AttentionConfig(attention) if isinstance(attention, str) else attention
        model = model.with_attention(config)
    if not model.attention.interpret:
        reason = unavailable_reason(model.attention.impl)
        if reason:
            raise ModelLoadError(f"{reason}; use --attention auto, xla or blocked")
    return model


class EngineModel(ModelInputs):
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

        On an accelerator with packing on, the grid is packing-first (`packed_seq_lengths`:
        64, 128, 256, 512, ... and batches that fill the budget) unless lengths are given.

        `attention`: the attention implementation (models/attention.py; default `auto`,
        chosen per backend and bucket). `warmup_max_len`: warm-up compiles the buckets up
        to this length; longer ones compile on first use. `max_embed_len`: most tokens of
        one input embedded with `chunking` (default 16x the model's maximum).
        """
        model = _with_attention(model, attention)
        config = model.config
        super().__init__(
            model.card,
            model.model_dir,
            eos_id=getattr(config, "eos_token_id", None) if model.card.append_eos else None,
            pad_id=int(getattr(config, "pad_token_id", 0)),
            token_types=TokenTypes(
                int(getattr(config, "vocab_size", 0) or 0),
                int(getattr(config, "type_vocab_size", 0) or 0),
            ),
            max_embed_len=max_embed_len,
        )
        self.warmup_max_len = warmup_max_len
        self.model = model
        self.runner: Runner = BucketRunner(
            model.module(),
            model.params,
            pooling=model.card.pooling,
            normalize=model.card.normalize,
            grid=self._bucket_grid(token_budget, batch_sizes, seq_lengths, packing),
            mesh=model.mesh,
            pad_id=self.pad_id,
        )
        self.packing = False
        self.set_packing(self.can_pack if packing is None else packing)
        if model.card.tasks:
            self.enable_lora()  # the model's own task adapters: resident from the start
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
            self.images = ImageEngine(model, token_budget=self.grid.token_budget)

    def _bucket_grid(
        self,
        token_budget: int | None,
        batch_sizes: Sequence[int],
        seq_lengths: Sequence[int] | None,
        packing: bool | None,
    ) -> BucketGrid:
        """The (batch, length) grid: packing-first on an accelerator when the model packs and
        no lengths are given; the budget and batch sizes per data shard of the mesh."""
        backend = jax.default_backend()
        will_pack = self.can_pack if packing is None else packing
        if will_pack and backend != "cpu" and seq_lengths is None:
            seq_lengths = packed_seq_lengths(self.card.max_length)
            if batch_sizes == DEFAULT_BATCH_SIZES:
                batch_sizes = PACKED_BATCH_SIZES
        budget, sizes = data_parallel_grid_options(
            self.model.mesh.shape[DATA_AXIS],
            token_budget or default_token_budget(backend),
            batch_sizes,
        )
        return BucketGrid.for_max_length(
            self.card.max_length, budget, batch_sizes=sizes, seq_lengths=seq_lengths
        )

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
        route: str | None = None,
        **grid_options,
    ):
        """Load `spec` (directory or card name; None = embedded default) and build its engine.

        `route`: the route to load of a sentence-transformers Router model (its `query` or
        `document` side; the server loads every route and picks one per request).

        `mesh`: a mesh, or a shape for one over all devices (default: one device).
        `compile_cache_dir=False` leaves JAX's persistent cache alone; None uses the default directory.
        """
        if compile_cache_dir is not False:
            enable_compile_cache(None if compile_cache_dir is True else compile_cache_dir)
        if isinstance(mesh, MeshShape):
            mesh = make_mesh(mesh)
        engine = cls(load_model(spec, dtype=dtype, mesh=mesh, route=route), **grid_options)
        if warmup:
            engine.warmup(warmup_progress)
        return engine

    def warmup(self, progress: Callable[[int, int, Bucket], None] | None = None) -> float:
        """Compile every program this model's requests run, before any arrives: its token
        grid and its image programs (a vision-language model's items compile per shape on
        first use). Seconds taken."""
        start = time.perf_counter()
        if self.token_grid_used:
            self.runner.warmup(progress, self.warmup_max_len)
        if self.images is not None:
            self.images.warmup(progress)
        return time.perf_counter() - start

    @property
    def token_grid_used(self) -> bool:
        """Whether requests run on the token-row grid: not a vision-language model's, whose
        jobs run on its own programs."""
        return self.fused is None

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

        Checks up front the lengths /ready waits for (the shortest and longest warm-up
        lengths) and the model's maximum, which between them bound the others (rows x length
        is capped by the token budget; attention grows with length); the runner then checks
        every later program as it compiles (`BucketRunner.memory_budget`). Where it cannot
        (a multi-process group, which must plan one grid everywhere) every warm-up length is
        checked up front.
        """
        lengths = [s for s in self.grid.seq_lengths if s <= self.warmup_max_len]
        on_compile = self.runner.checks_memory_on_compile
        if on_compile and lengths:
            lengths = sorted({lengths[0], lengths[-1]})
        fit_grid(self.runner, budget_bytes, [*lengths, self.grid.max_length])
        if on_compile:
            self.runner.memory_budget = budget_bytes
        return self.grid

    @property
    def grid(self) -> BucketGrid:
        """The runner's grid: one place, which the memory check and the runner's later
        memory checks (rows capped at a length) change."""
        return self.runner.grid

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
        if (
            self.images is not None
            or self.card.kind != "embedding"
            or self.model.config.num_layers == 0
        ):
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

    # -- token rows on the devices ------------------------------------------------------------

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

    def plan(
        self,
        token_lists: Sequence[np.ndarray],
        packing: bool | None = None,
        lengths: np.ndarray | None = None,
    ) -> list[PlannedBatch]:
        packing = self.packing if packing is None else packing
        if lengths is None:
            lengths = np.fromiter(map(len, token_lists), np.int64, len(token_lists))
        return (plan_packed if packing else plan_batches)(lengths, self.runner.planning_grid())

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


class TextWorkload(Workload):
    """Token-id rows through an EngineModel's bucket grid and runner (packed when it packs)."""

    def __init__(self, engine: EngineModel):
        self.engine = engine
        self.dimensions = engine.dimensions
        self.step_budget = engine.grid.token_budget

    def sizes(self, rows: Sequence[np.ndarray]) -> np.ndarray:
        return np.fromiter(map(len, rows), np.int64, len(rows))

    def costs(self, sizes: np.ndarray) -> np.ndarray:
        if self.engine.packing:
            return sizes  # packed rows waste (almost) nothing
        return self.engine.grid.seq_buckets(sizes)

    def plan(self, rows: Sequence[np.ndarray], sizes: np.ndarray) -> list[PlannedBatch]:
        return self.engine.plan(rows, lengths=sizes)

    def run(
        self, rows: Sequence[np.ndarray], planned: PlannedBatch, slots: np.ndarray | None
    ) -> DeviceResult:
        return self.engine.dispatch(rows, planned, slots)

    def warmup(self, progress=None) -> float:
        if not self.engine.token_grid_used:
            return 0.0
        # Ready once the shortest and longest lengths have their largest batch; the rest
        # compiles behind traffic (the planner uses only what is compiled meanwhile).
        return self.engine.runner.warmup(progress, self.engine.warmup_max_len, background=True)
