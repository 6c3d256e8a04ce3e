"""Loading the models of one server: meshes (shared or per-model devices), engines, LoRA,
and a memory plan that must fit all of them together."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import jax
from jax.sharding import Mesh

from jaxembed.engine.device.memory import device_memory_bytes, param_bytes_per_device
from jaxembed.engine.model import EngineModel
from jaxembed.errors import ModelLoadError
from jaxembed.parallel.mesh import describe, make_mesh
from jaxembed_server.config import ServerConfig
from jaxembed_server.model_config import ModelConfig

log = logging.getLogger("jaxembed.server")


def model_mesh(model: ModelConfig, devices: Sequence[jax.Device], default: Mesh) -> Mesh:
    """The model's own mesh over `devices` (its `devices:` indices into them), or the shared one."""
    if model.devices is None:
        return default
    if max(model.devices) >= len(devices):
        raise ModelLoadError(
            f"model {model.name or model.spec}: devices {list(model.devices)} but this process "
            f"serves {len(devices)} device(s) (0-{len(devices) - 1})"
        )
    return make_mesh(model.mesh, [devices[i] for i in model.devices])


def build_embedder(model: ModelConfig, compile_cache: str | None, mesh: Mesh) -> EngineModel:
    grid_options = {
        "token_budget": model.token_budget,
        "packing": model.packing,
        "attention": model.attention,
        "warmup_max_len": model.warmup_max_len,
        "max_embed_len": model.max_embed_len,
    }
    if model.batch_sizes:
        grid_options["batch_sizes"] = model.batch_sizes
    if model.seq_lengths:
        grid_options["seq_lengths"] = model.seq_lengths
    return EngineModel.from_pretrained(
        model.spec,
        dtype=model.dtype,
        mesh=mesh,
        compile_cache_dir=compile_cache,
        route=model.route,
        **grid_options,
    )


def enable_lora(model: ModelConfig, embedder: EngineModel) -> None:
    """Reserve adapter slots and preload the model's adapters (they stay resident)."""
    if not model.lora_enabled:
        return
    embedder.enable_lora(max_loras=model.max_loras, max_rank=model.max_lora_rank)
    for name, path in model.lora:
        embedder.adapter_slot(name, path)
        log.info("loaded LoRA adapter %s for %s", name, embedder.card.name)


def load_models(
    config: ServerConfig, devices: Sequence[jax.Device], shared: Mesh
) -> list[EngineModel]:
    embedders = []
    for model in config.model_configs():
        mesh = model_mesh(model, devices, shared)
        embedder = build_embedder(model, config.compile_cache, mesh)
        enable_lora(model, embedder)
        log.info(
            "loaded %s (%s, %s) in %.2f s from %s on mesh %s over devices %s; %d buckets, "
            "token budget %d",
            model.label or _label(embedder.card.name, model.route),
            embedder.model.source_format,
            embedder.model.dtype,
            embedder.model.load_seconds,
            embedder.model.model_dir,
            describe(mesh),
            sorted(_devices(embedder)),
            len(embedder.grid.buckets()),
            embedder.grid.token_budget,
        )
        embedders.append(embedder)
    return embedders


def _label(name: str, route: str | None) -> str:
    """A model's name in logs and metrics; a Router model's routes each with their own."""
    return f"{name}/{route}" if route else name


def _devices(embedder: EngineModel) -> set[int]:
    return {d.id for d in embedder.model.mesh.devices.flat}


def check_memory(config: ServerConfig, embedders: Sequence[EngineModel]) -> None:
    """Fit every model's bucket grid into `--memory-fraction` of a device, with the parameters
    of the other models on the same devices counted as taken. Run after packing and LoRA are
    settled: the programs checked are those warm-up runs."""
    memory = device_memory_bytes(config.device_memory_gib)
    if memory is None:
        log.info(
            "device memory not reported by the %s backend: bucket grids are not checked "
            "against it (pass --device-memory-gib to check)",
            jax.default_backend(),
        )
        return
    budget = int(memory * config.memory_fraction)
    params = [param_bytes_per_device(e.model.params) for e in embedders]
    for i, embedder in enumerate(embedders):
        others = sum(
            p
            for j, p in enumerate(params)
            if j != i and _devices(embedders[j]) & _devices(embedder)
        )
        start = time.perf_counter()
        try:
            embedder.fit_memory(budget - others)
        except ModelLoadError as e:
            if len(embedders) == 1:
                raise
            raise ModelLoadError(
                f"{embedder.card.name}: {e}; {consumers(embedders, params)}"
            ) from None
        log.info(
            "memory plan %s: every bucket fits %.2f GiB per device (%.0f%% of %.2f GiB, "
            "less %.2f GiB of other models' parameters), checked in %.1f s on the ready "
            "set's programs (compiled side by side, kept for warm-up; later ones are checked as "
            "they compile)",
            embedder.card.name,
            (budget - others) / 2**30,
            config.memory_fraction * 100,
            memory / 2**30,
            others / 2**30,
            time.perf_counter() - start,
        )


def consumers(embedders: Sequence[EngineModel], params: Sequence[int]) -> str:
    """The largest parameter holders, for an error that says what to move or drop."""
    ranked = sorted(zip(params, embedders, strict=True), key=lambda pe: -pe[0])
    listed = ", ".join(f"{e.card.name} {p / 2**30:.2f} GiB" for p, e in ranked[:5])
    return f"parameters per device, largest first: {listed}; give a model its own `devices:`"
