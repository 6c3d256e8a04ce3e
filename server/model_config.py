"""The models one server process serves: `--model [NAME=]SPEC` (repeatable) or `--config FILE`.

Every per-model option defaults to the server-wide flag of the same name, so
`jaxembed serve --model X` behaves as it always did and a config file only
states what differs per model:

    models:
      - name: minilm                 # what clients send as `model` (default: the card's names)
        model: all-MiniLM-L6-v2      # directory, converted checkpoint or card name
        served_model_names: [text-embedding-3-small]
      - name: qwen
        model: /models/qwen3-embedding-0.6b
        dtype: bfloat16
        devices: 0-3                 # its own devices (default: all models share the mesh)
        max_queued_requests: 64
        lora: {support: /adapters/support}
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from jaxembed.engine.batching.buckets import DEFAULT_WARMUP_MAX_LEN
from jaxembed.engine.inputs.chat import read_template_option
from jaxembed.engine.request import limits
from jaxembed.parallel.mesh import MeshShape
from jaxembed.routes import read_router

# Model options of a config file entry beyond `name`/`model` (each also a server-wide flag).
INHERITED = (
    "dtype",
    "token_budget",
    "batch_sizes",
    "seq_lengths",
    "packing",
    "attention",
    "warmup_max_len",
    "max_embed_len",
    "chunking",
    "lora_root",
    "max_loras",
    "max_lora_rank",
    "mesh",
    "max_queued_requests",
    "max_queued_tokens",
    "cache_mb",
    "quantization_ranges",
    "chat_template",
)


class ModelConfigError(ValueError):
    """A --model/--config value that cannot be served as written."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    name: str | None = None  # routing name; None: the card's names
    spec: str | None = None  # None: the embedded default model
    served_model_names: tuple[str, ...] = ()
    dtype: str | None = None
    token_budget: int | None = None
    batch_sizes: tuple[int, ...] | None = None
    seq_lengths: tuple[int, ...] | None = None
    packing: bool | None = None
    attention: str | None = None
    warmup_max_len: int = DEFAULT_WARMUP_MAX_LEN
    max_embed_len: int | None = None
    chunking: bool = False
    lora: tuple[tuple[str, str], ...] = ()  # (name, path) preloaded adapters
    lora_root: str | None = None
    max_loras: int = 8
    max_lora_rank: int = 64
    mesh: MeshShape | None = None
    devices: tuple[int, ...] | None = None  # indices into the serving devices; None: all
    max_queued_requests: int = limits.DEFAULT_MAX_QUEUED_REQUESTS
    max_queued_tokens: int = limits.DEFAULT_MAX_QUEUED_TOKENS
    cache_mb: float = 128.0
    quantization_ranges: str | None = None  # int8/uint8 ranges file; None: calibrated
    chat_template: str | None = None  # replaces the directory's (the template's text)
    # One route of a sentence-transformers Router model (`expand_routes`): the server loads
    # each route as a model and serves them together under the model's names.
    route: str | None = None

    @property
    def lora_enabled(self) -> bool:
        return bool(self.lora or self.lora_root)

    @property
    def label(self) -> str | None:
        """What logs and metrics call this entry: its name, with the route of a Router's."""
        return f"{self.name}/{self.route}" if self.name and self.route else self.name

    def names(self, card_names: Sequence[str]) -> tuple[str, ...]:
        """Names clients may send for this model, the canonical one first."""
        names = [self.name] if self.name else []
        names += list(self.served_model_names) or ([] if self.name else list(card_names))
        return tuple(dict.fromkeys(names))


def inherit(defaults: Any, **values: Any) -> ModelConfig:
    """A ModelConfig with every inherited option taken from `defaults` (the server's flags)."""
    base = {key: getattr(defaults, key) for key in INHERITED}
    base["lora"] = tuple(getattr(defaults, "lora", ()))
    return ModelConfig(**{**base, **values})


def parse_devices(value: Any) -> tuple[int, ...]:
    """`0-3`, `0,2,4`, `[0, 1]` or `2` → device indices."""
    if isinstance(value, bool):
        raise ModelConfigError(f"devices: expected indices like 0-3, got {value!r}")
    if isinstance(value, int):
        return (value,)
    if isinstance(value, list) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        indices = list(value)
    elif isinstance(value, str):
        indices = []
        for part in value.replace(" ", "").split(","):
            first, sep, last = part.partition("-")
            try:
                indices += range(int(first), int(last) + 1) if sep else [int(first)]
            except ValueError:
                raise ModelConfigError(
                    f"devices: expected indices like 0-3, got {value!r}"
                ) from None
    else:
        raise ModelConfigError(f"devices: expected indices like 0-3, got {value!r}")
    if not indices or min(indices) < 0 or len(set(indices)) != len(indices):
        raise ModelConfigError(f"devices: {value!r} is empty, negative or repeats a device")
    return tuple(indices)


def split_model_arg(text: str) -> tuple[str | None, str]:
    """`NAME=SPEC` → (NAME, SPEC); a plain SPEC → (None, SPEC)."""
    name, sep, spec = text.partition("=")
    if sep and name and spec and "/" not in name and ":" not in name:
        return name, spec
    return None, text


def models_from_flags(defaults: Any, model_args: Sequence[str]) -> tuple[ModelConfig, ...]:
    """`--model` values (none: the embedded default); per-model flags apply to all."""
    if not model_args:
        return (inherit(defaults, served_model_names=tuple(defaults.served_model_names)),)
    several = len(model_args) > 1
    if several and defaults.served_model_names:
        raise ModelConfigError(
            "--served-model-name applies to a single --model; name several models with "
            "--model NAME=SPEC or give each its names in --config"
        )
    if several and (defaults.lora or defaults.lora_root):
        raise ModelConfigError(
            "--lora/--lora-root apply to a single --model; set LoRA per model in --config"
        )
    models = []
    for arg in model_args:
        name, spec = split_model_arg(arg)
        served = () if several else tuple(defaults.served_model_names)
        models.append(inherit(defaults, name=name, spec=spec, served_model_names=served))
    return tuple(models)


def models_from_file(defaults: Any, path: str | Path) -> tuple[ModelConfig, ...]:
    """The `models:` list of a YAML or JSON file (see the module docstring)."""
    path = Path(path)
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as e:
        reason = " ".join(str(e).split())  # one line: YAML's errors span several
        raise ModelConfigError(f"cannot read --config {path}: {reason}") from None
    if not isinstance(data, Mapping) or set(data) != {"models"}:
        raise ModelConfigError(f"--config {path}: expected one key, `models:` (a list)")
    entries = data["models"]
    if not isinstance(entries, list) or not entries:
        raise ModelConfigError(f"--config {path}: `models` must be a non-empty list")
    return tuple(_model_entry(defaults, entry, i) for i, entry in enumerate(entries))


def _model_entry(defaults: Any, entry: Any, index: int) -> ModelConfig:
    where = f"--config models[{index}]"
    if not isinstance(entry, Mapping) or not isinstance(entry.get("model"), str):
        raise ModelConfigError(f"{where}: each model needs `model:` (a directory or card name)")
    allowed = {"name", "model", "served_model_names", "lora", "devices", *INHERITED}
    unknown = sorted(set(entry) - allowed)
    if unknown:
        raise ModelConfigError(f"{where}: unknown option(s) {unknown}; known: {sorted(allowed)}")
    values = {k: v for k, v in entry.items() if k in INHERITED}
    if isinstance(values.get("chat_template"), str):
        try:
            values["chat_template"] = read_template_option(values["chat_template"])
        except ValueError as e:
            raise ModelConfigError(f"{where}: {e}") from None
    for key in ("batch_sizes", "seq_lengths"):
        if key in values and values[key] is not None:
            values[key] = tuple(values[key])
    if "mesh" in values and isinstance(values["mesh"], str):
        values["mesh"] = MeshShape.parse(values["mesh"])
    lora = entry.get("lora") or {}
    if not isinstance(lora, Mapping):
        raise ModelConfigError(f"{where}: `lora` maps adapter names to directories")
    return inherit(
        defaults,
        name=entry.get("name"),
        spec=entry["model"],
        served_model_names=tuple(entry.get("served_model_names") or ()),
        lora=tuple((str(k), str(v)) for k, v in lora.items()),
        devices=parse_devices(entry["devices"]) if entry.get("devices") is not None else None,
        **values,
    )


def expand_routes(models: Sequence[ModelConfig]) -> tuple[ModelConfig, ...]:
    """Each sentence-transformers Router model (jaxembed/routes.py) as one entry per route,
    in the model's order; every other entry as it is."""
    out: list[ModelConfig] = []
    for model in models:
        path = Path(model.spec).expanduser() if model.spec else None
        layout = read_router(path) if path is not None and path.is_dir() else None
        if layout is None:
            out.append(model)
            continue
        if model.lora_enabled:
            raise ModelConfigError(
                f"{model.spec}: LoRA adapters are not supported for Router models"
            )
        out += [dataclasses.replace(model, route=route) for route in layout.route_names]
    return tuple(out)
