"""PEFT LoRA adapters: loading, validation, and the slot bank a server serves them from.

An adapter directory holds `adapter_config.json` and `adapter_model.safetensors`
as `peft` writes them. Each `lora_A`/`lora_B` pair is mapped to one of the
model's projection *sites* (BERT: query/key/value/attention_output/
intermediate/output; Mistral/Qwen/Gemma3: q/k/v/o/gate/up/down; ModernBERT:
attn.Wqkv/attn.Wo/mlp.Wi/mlp.Wo; NomicBERT: Wqkv/out_proj/fc11/fc12/fc2), its scaling
(`alpha / r`, or `alpha / sqrt(r)` with rsLoRA) folded into B.

`LoraBank` keeps `max_loras` adapters on the devices in fixed-shape stacks
([layers, slots, in, max_rank] and [layers, slots, max_rank, out], slot 0 =
the base model) so that any mix of adapters runs in one compiled batch
(jaxembed/models/lora_delta.py) and loading one more never recompiles.
Adapters in use by queued requests are pinned; the least recently used
unpinned one is evicted when a slot is needed.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import math
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxembed.errors import AdapterError, JaxEmbedError, OverloadedError
from jaxembed.models.decoder import DecoderConfig
from jaxembed.models.encoder import EncoderConfig
from jaxembed.models.gemma3 import Gemma3Config
from jaxembed.models.modernbert import ModernBertConfig
from jaxembed.models.nomic_bert import NomicBertConfig
from jaxembed.weights.safetensors_io import SafetensorsFile

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"

# PEFT module names (any prefix) -> (layer, site). One table per architecture kind.
_ENCODER_SITES = (
    (re.compile(r"(?:^|\.)layer\.(\d+)\.attention\.self\.(query|key|value)$"), None),
    (re.compile(r"(?:^|\.)layer\.(\d+)\.attention\.output\.dense$"), "attention_output"),
    (re.compile(r"(?:^|\.)layer\.(\d+)\.intermediate\.dense$"), "intermediate"),
    (re.compile(r"(?:^|\.)layer\.(\d+)\.output\.dense$"), "output"),
)
_DECODER_SITES = (
    (re.compile(r"(?:^|\.)layers\.(\d+)\.self_attn\.(q|k|v|o)_proj$"), None),
    (re.compile(r"(?:^|\.)layers\.(\d+)\.mlp\.(gate|up|down)_proj$"), None),
)
_MODERNBERT_SITES = (
    (re.compile(r"(?:^|\.)layers\.(\d+)\.attn\.Wqkv$"), "qkv"),
    (re.compile(r"(?:^|\.)layers\.(\d+)\.attn\.Wo$"), "output"),
    (re.compile(r"(?:^|\.)layers\.(\d+)\.mlp\.Wi$"), "wi"),
    (re.compile(r"(?:^|\.)layers\.(\d+)\.mlp\.Wo$"), "wo"),
)
# NomicBERT: transformers 5's module names (the decoder's) or nomic's own, whose fused Wqkv
# adapter is the q, k and v adapters sharing A (B split in thirds: exact).
_NOMIC_SITES = (
    *_DECODER_SITES,
    (re.compile(r"(?:^|\.)layers\.(\d+)\.attn\.Wqkv$"), ("q", "k", "v")),
    (re.compile(r"(?:^|\.)layers\.(\d+)\.attn\.out_proj$"), "o"),
    (re.compile(r"(?:^|\.)layers\.(\d+)\.mlp\.fc11$"), "up"),
    (re.compile(r"(?:^|\.)layers\.(\d+)\.mlp\.fc12$"), "gate"),
    (re.compile(r"(?:^|\.)layers\.(\d+)\.mlp\.fc2$"), "down"),
)
# Modules an adapter may target that do not affect embeddings (BERT's pooler head).
_UNUSED_MODULES = re.compile(r"(?:^|\.)pooler\.")


def _decoder_dims(config: Any) -> dict[str, tuple[int, int]]:
    d, f = config.hidden_size, config.intermediate_size
    q, kv = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
    return {"q": (d, q), "k": (d, kv), "v": (d, kv), "o": (q, d), "gate": (d, f), "up": (d, f), "down": (f, d)}  # fmt: skip


def _sites(config: Any) -> tuple[dict[str, tuple[int, int]], tuple]:
    """(site → (in, out) features, PEFT module-name patterns) of an architecture (of the
    backbone, for an embedder with Dense modules or a SPLADE head)."""
    config = getattr(config, "backbone", config)
    d, f = config.hidden_size, config.intermediate_size
    if isinstance(config, EncoderConfig):
        dims = {"query": (d, d), "key": (d, d), "value": (d, d), "attention_output": (d, d)}
        return dims | {"intermediate": (d, f), "output": (f, d)}, _ENCODER_SITES
    if isinstance(config, DecoderConfig | Gemma3Config):  # the same module names
        return _decoder_dims(config), _DECODER_SITES
    if isinstance(config, ModernBertConfig):
        dims = {"qkv": (d, 3 * d), "output": (d, d), "wi": (d, 2 * f), "wo": (f, d)}
        return dims, _MODERNBERT_SITES
    if isinstance(config, NomicBertConfig) and not config.tasks:
        dims = {"q": (d, d), "k": (d, d), "v": (d, d), "o": (d, d)}
        return dims | {"up": (d, f), "gate": (d, f), "down": (f, d)}, _NOMIC_SITES
    raise JaxEmbedError(f"LoRA is not supported for {type(config).__name__}")


def site_dims(config: Any) -> dict[str, tuple[int, int]]:
    """(in, out) features of every site an adapter may target."""
    return _sites(config)[0]


def _site_of(module: str, config: Any) -> tuple[int, tuple[str, ...]] | None:
    """(layer, sites) a PEFT module adapts; several sites = a fused projection whose B is
    split evenly between them (each with the whole A)."""
    for pattern, site in _sites(config)[1]:
        if m := pattern.search(module):
            sites = site or m.group(2)
            return int(m.group(1)), (sites,) if isinstance(sites, str) else sites
    return None


@dataclasses.dataclass(frozen=True)
class LoraAdapter:
    name: str
    rank: int
    scaling: float
    # site -> (a [layers, in, rank], b [layers, rank, out] with the scaling folded in)
    weights: dict[str, tuple[np.ndarray, np.ndarray]]
    path: str = ""  # the directory it was read from


def load_adapter(path: str | Path, config: Any, *, name: str, max_rank: int) -> LoraAdapter:
    """Read and check a PEFT LoRA directory against the model; every problem is an AdapterError."""
    path = Path(path)
    if not (path / CONFIG_FILE).is_file() or not (path / WEIGHTS_FILE).is_file():
        raise AdapterError(f"adapter {name!r} needs {CONFIG_FILE} and {WEIGHTS_FILE}")
    try:
        cfg = json.loads((path / CONFIG_FILE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise AdapterError(f"adapter {name!r}: {CONFIG_FILE} is not valid JSON ({e})") from None
    if not isinstance(cfg, dict) or cfg.get("peft_type", "LORA") != "LORA":
        raise AdapterError(f"adapter {name!r} is not a LoRA adapter (peft_type LORA)")
    for flag, what in (("use_dora", "DoRA"), ("lora_bias", "LoRA biases")):
        if cfg.get(flag):
            raise AdapterError(f"adapter {name!r} uses {what}, which is not supported")
    if cfg.get("bias", "none") != "none" or cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        raise AdapterError(
            f"adapter {name!r} uses biases or per-module rank/alpha patterns (not supported)"
        )
    rank, alpha = cfg.get("r"), cfg.get("lora_alpha", cfg.get("r"))
    if not isinstance(rank, int) or rank < 1 or not isinstance(alpha, int | float):
        raise AdapterError(f"adapter {name!r} has no valid rank r / lora_alpha")
    if rank > max_rank:
        raise AdapterError(f"adapter {name!r} has rank {rank}, above the maximum of {max_rank}")
    scaling = alpha / math.sqrt(rank) if cfg.get("use_rslora") else alpha / rank

    dims = site_dims(config)
    layers = config.num_layers
    weights: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    unknown: list[str] = []
    try:
        tensors = SafetensorsFile(path / WEIGHTS_FILE)
    except (JaxEmbedError, OSError, ValueError) as e:
        raise AdapterError(f"adapter {name!r}: cannot read {WEIGHTS_FILE} ({e})") from None
    try:
        pairs: dict[str, dict[str, str]] = collections.defaultdict(dict)
        for key in tensors.keys():  # noqa: SIM118 (a reader, not a dict)
            m = re.fullmatch(r"(.+)\.lora_([AB])(?:\.[^.]+)?\.weight", key)
            if not m:
                unknown.append(key)
                continue
            pairs[m.group(1)][m.group(2)] = key
        for module, keys in sorted(pairs.items()):
            if _UNUSED_MODULES.search(module):
                continue
            where = _site_of(module, config)
            if where is None or where[0] >= layers or set(keys) != {"A", "B"}:
                unknown.append(module)
                continue
            layer, sites = where
            a, b = tensors.get(keys["A"]), tensors.get(keys["B"])  # [r, in], [out, r]
            d_in = dims[sites[0]][0]
            d_out = sum(dims[site][1] for site in sites)
            if a.shape != (rank, d_in) or b.shape != (d_out, rank):
                raise AdapterError(
                    f"adapter {name!r}: {module} has shapes {a.shape} / {b.shape}, "
                    f"expected ({rank}, {d_in}) / ({d_out}, {rank})"
                )
            start = 0
            for site in sites:
                width = dims[site][1]
                if site not in weights:
                    weights[site] = (
                        np.zeros((layers, d_in, rank), np.float32),
                        np.zeros((layers, rank, width), np.float32),
                    )
                weights[site][0][layer] = a.astype(np.float32).T
                weights[site][1][layer] = b[start : start + width].astype(np.float32).T * scaling
                start += width
    finally:
        tensors.close()
    if unknown:
        raise AdapterError(
            f"adapter {name!r} targets modules this model does not have or jaxembed cannot adapt: "
            f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}"
        )
    if not weights:
        raise AdapterError(f"adapter {name!r} holds no LoRA weights")
    return LoraAdapter(name=name, rank=rank, scaling=scaling, weights=weights, path=str(path))


class TaskAdapters:
    """The adapter "bank" of a model whose task adapters are its own parameters (jina-v3).

    Slot i + 1 is task i, always resident: rows pick their task exactly as rows pick a
    PEFT adapter's slot, through the same batching and compiled LoRA programs, but there
    are no stacks to pass (`arrays()` is empty) and nothing to load or evict."""

    def __init__(self, tasks: tuple[str, ...], model_name: str):
        self.tasks, self.model_name = tasks, model_name
        self.max_loras, self.max_rank = len(tasks), 0

    def arrays(self) -> dict[str, tuple[jax.Array, jax.Array]]:
        return {}

    def loaded(self) -> list[str]:
        return list(self.tasks)

    def acquire(self, name: str, load: Callable[[], LoraAdapter] | None = None) -> int:
        if name not in self.tasks:
            raise AdapterError(
                f"{self.model_name} serves only its built-in task adapters "
                f"({', '.join(self.tasks)}), not {name[:100]!r}"
            )
        return self.tasks.index(name) + 1

    def identity(self, name: str) -> str:
        return f"task:{name}"

    def release(self, name: str) -> None:
        pass


class LoraBank:
    """Up to `max_loras` adapters resident on the devices, addressed by slot (0 = base)."""

    def __init__(
        self,
        config: Any,
        *,
        max_loras: int,
        max_rank: int,
        dtype: jnp.dtype,
        sharding: jax.sharding.Sharding,
    ):
        if max_loras < 1 or max_rank < 1:
            raise ValueError("max_loras and max_rank must be positive")
        self.config, self.max_loras, self.max_rank = config, max_loras, max_rank
        self.dims = site_dims(config)
        self._dtype, self._sharding = dtype, sharding
        layers, slots = config.num_layers, max_loras + 1
        self._arrays = {
            site: (
                jax.device_put(jnp.zeros((layers, slots, d_in, max_rank), dtype), sharding),
                jax.device_put(jnp.zeros((layers, slots, max_rank, d_out), dtype), sharding),
            )
            for site, (d_in, d_out) in self.dims.items()
        }
        self._slots: collections.OrderedDict[str, int] = collections.OrderedDict()  # LRU order
        self._pins: collections.Counter[str] = collections.Counter()
        self._loads: dict[str, int] = {}  # name -> load number (a reload may read new files)
        self._load_count = 0
        self._lock = threading.Lock()
        # Around every write into a slot: a model spread over several processes publishes
        # the load as a step there (engine/device/group_runner.py), so every process writes
        # the same slot at the same point between batches.
        self.write_guard: Callable[[int, LoraAdapter], contextlib.AbstractContextManager] = (
            lambda slot, adapter: contextlib.nullcontext()
        )

    def arrays(self) -> dict[str, tuple[jax.Array, jax.Array]]:
        """The current stacks (replaced, never mutated, when an adapter is loaded)."""
        return self._arrays

    def loaded(self) -> list[str]:
        with self._lock:
            return list(self._slots)

    def acquire(self, name: str, load: Callable[[], LoraAdapter]) -> int:
        """The adapter's slot, pinned until `release(name)`; loads it (evicting LRU) if needed."""
        with self._lock:
            if name in self._slots:
                self._slots.move_to_end(name)
                self._pins[name] += 1
                return self._slots[name]
            adapter = load()
            used = set(self._slots.values())
            free = [s for s in range(1, self.max_loras + 1) if s not in used]
            if not free:
                victim = next((n for n in self._slots if self._pins[n] == 0), None)
                if victim is None:
                    raise OverloadedError(
                        f"all {self.max_loras} adapter slots are in use by queued requests",
                        retry_after=1,
                    )
                free = [self._slots.pop(victim)]
            slot = free[0]
            self._write(slot, adapter)
            self._slots[name] = slot
            self._load_count += 1
            self._loads[name] = self._load_count
            self._pins[name] += 1
            return slot

    def identity(self, name: str) -> str:
        """Names this load of the adapter (for cache keys): a reload after eviction differs."""
        with self._lock:
            return f"{name}#{self._loads.get(name, 0)}"

    def release(self, name: str) -> None:
        with self._lock:
            if self._pins[name] > 0:
                self._pins[name] -= 1

    def load_into(self, slot: int, path: str) -> None:
        """Read the adapter at `path` into `slot` (a pod's follower, told by the leader)."""
        self._write_arrays(slot, load_adapter(path, self.config, name=path, max_rank=self.max_rank))

    def _write(self, slot: int, adapter: LoraAdapter) -> None:
        with self.write_guard(slot, adapter):
            self._write_arrays(slot, adapter)

    def _write_arrays(self, slot: int, adapter: LoraAdapter) -> None:
        arrays = dict(self._arrays)
        for site, (a_stack, b_stack) in arrays.items():
            d_in, d_out = self.dims[site]
            a = np.zeros((self.config.num_layers, d_in, self.max_rank), np.float32)
            b = np.zeros((self.config.num_layers, self.max_rank, d_out), np.float32)
            if site in adapter.weights:  # zero-padded to the bank's rank: exact same product
                a[:, :, : adapter.rank], b[:, : adapter.rank, :] = adapter.weights[site]
            arrays[site] = (
                a_stack.at[:, slot].set(jnp.asarray(a, self._dtype)),
                b_stack.at[:, slot].set(jnp.asarray(b, self._dtype)),
            )
        jax.block_until_ready(arrays)
        self._arrays = arrays
