"""The jaxembed Sanic app: one `EmbeddingService` per served model, routes registered by name.

Routes are module-level handlers (server/route_*.py) that read what they need
from `app.ctx`: the config, the served models (server/served.py), the metrics,
the media loader and the OpenAPI document. No device work runs on the event loop.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from sanic import Sanic

import jaxembed
from jaxembed.engine.batching.batcher import FaultHook
from jaxembed.engine.batching.device_share import DeviceShare
from jaxembed.engine.model import EngineModel
from jaxembed.engine.request.limits import QueueLimits
from jaxembed.engine.service.backend import ServiceHooks
from jaxembed.engine.service.config import ServiceConfig
from jaxembed.engine.service.embedding import EmbeddingService
from jaxembed.engine.service.rows import local_service
from jaxembed.media_loader import MediaLoader, MediaPolicy
from jaxembed_server import (
    api_cohere,
    api_rerank,
    api_score,
    api_tei,
    docs_ui,
    middleware,
    route_embeddings,
    route_info,
    route_tokens,
    startup,
)
from jaxembed_server.config import ServerConfig
from jaxembed_server.metrics import Metrics
from jaxembed_server.model_config import ModelConfig
from jaxembed_server.openapi import ServedModel as OpenAPIModel
from jaxembed_server.openapi import build_openapi
from jaxembed_server.served import ServedModels, serve_models

log = logging.getLogger("jaxembed.server")
_app_ids = itertools.count()
# Sanic's own response cut comes this long after --request-timeout, so that ours answers first.
RESPONSE_MARGIN_SECONDS = 60


def service_config(config: ServerConfig, model: ModelConfig) -> ServiceConfig:
    return ServiceConfig(
        queue=QueueLimits(
            max_queued_requests=model.max_queued_requests,
            max_queued_tokens=model.max_queued_tokens,
            aging_seconds=config.aging_seconds,
            step_batches=config.step_batches,
        ),
        cache_bytes=int(model.cache_mb * 2**20),
        quantization_ranges=model.quantization_ranges,
        max_request_tokens=config.max_request_tokens,
        max_media_items=config.max_media_items,
        max_image_pixels=config.max_image_pixels,
        max_video_seconds=config.max_video_seconds,
        max_video_frames=config.max_video_frames,
        max_decode_seconds=config.max_decode_seconds,
    )


def build_services(
    config: ServerConfig,
    embedders: Sequence[EngineModel],
    metrics: Metrics,
    fault_hook: FaultHook | None = None,
) -> list[EmbeddingService]:
    """One service per model entry (its input half over its device half, in this process);
    models on the same devices take fair turns (one DeviceShare)."""
    shares: dict[tuple[int, ...], DeviceShare] = {}
    services = []
    for model_config, embedder in zip(config.model_configs(), embedders, strict=True):
        devices = tuple(sorted(d.id for d in embedder.model.mesh.devices.flat))
        label = service_label(model_config, embedder.card.names)
        metrics.add_model(label)
        service = local_service(
            embedder,
            service_config(config, model_config),
            name=label,
            share=shares.setdefault(devices, DeviceShare()),
            hooks=ServiceHooks(
                on_batch=metrics.batch_observer(label),
                on_cache=metrics.cache_observer(label),
                fault_hook=fault_hook,
            ),
        )
        services.append(service)
    return services


def service_label(model_config: ModelConfig, card_names: Sequence[str]) -> str:
    """A service's name in logs and metrics: the model's first name (`/route` for a route of
    a Router model)."""
    name = model_config.names(card_names)[0]
    return f"{name}/{model_config.route}" if model_config.route else name


def build_models(
    config: ServerConfig,
    embedders: Sequence[EngineModel],
    metrics: Metrics,
    fault_hook: FaultHook | None = None,
) -> ServedModels:
    """The server's models over services in this process (a Router model's routes as one)."""
    services = build_services(config, embedders, metrics, fault_hook)
    return serve_models(config.model_configs(), services)


def openapi_document(config: ServerConfig, models: ServedModels) -> dict:
    """One document for all models: the union of what they accept."""
    return build_openapi(
        jaxembed.__version__,
        auth=bool(config.api_keys),
        served=OpenAPIModel(
            names=tuple(models.names),
            dimensions=max(m.card.dimensions for m in models),
            vocab_size=max(m.service.inputs.tokenizer.vocab_size for m in models),
            max_inputs=config.max_inputs,
            instructions=any(m.card.instruction_template for m in models),
            lora=any(m.resolver is not None for m in models),
            example_model=next((m.name for m in models.of_kind("embedding")), models.names[0]),
            example_reranker=next((m.name for m in models.of_kind("reranker")), "reranker"),
        ),
    )


def media_loader(config: ServerConfig) -> MediaLoader:
    return MediaLoader(
        MediaPolicy(
            allow_private=config.allow_private_media,
            root=Path(config.media_root).resolve() if config.media_root else None,
            max_bytes=config.max_media_bytes,
            timeout=config.media_timeout,
        )
    )


def configure(app: Sanic, config: ServerConfig) -> None:
    # Logging is configured once by `jaxembed serve` (server/logs.py), not by Sanic.
    app.config.REQUEST_MAX_SIZE = config.max_request_bytes
    app.config.FALLBACK_ERROR_FORMAT = "json"
    app.config.NOISY_EXCEPTIONS = False
    # Sanic waits this long for open connections on shutdown; in-flight work gets the same time.
    app.config.GRACEFUL_SHUTDOWN_TIMEOUT = config.drain_timeout
    # No framework default ends a request (docs/operations.md, "Time limits"): our own
    # --request-timeout answers first with a 504 in the API's shape; Sanic's cut comes later.
    app.config.RESPONSE_TIMEOUT = (
        config.request_timeout + RESPONSE_MARGIN_SECONDS if config.request_timeout else 10**9
    )
    app.config.REQUEST_TIMEOUT = config.read_timeout  # headers and body must arrive by then
    app.config.KEEP_ALIVE_TIMEOUT = config.keep_alive_timeout


def warmup_progress(name: str, service: EmbeddingService):
    """What a model's warm-up reports: every tenth program, then a summary of the whole of it
    (wall time, compile time, programs from the compile cache)."""
    started = time.monotonic()

    def progress(i: int, n: int, bucket) -> None:
        if i == 1 or i % 10 == 0:
            log.info(
                "warm-up %s: compiled %d/%d buckets (last %dx%d)",
                name,
                i,
                n,
                bucket.batch,
                bucket.seq,
            )
        if i == n:
            status = service.status()
            log.info(
                "warm-up %s: %d programs in %.1f s (%.1f s of compiling, %d from the compile "
                "cache, %d compiled)",
                name,
                n,
                time.monotonic() - started,
                status.compile_seconds,
                status.cache_hits,
                status.cache_misses,
            )

    return progress


async def start_models(app: Sanic) -> None:
    for model in app.ctx.models:
        progress = warmup_progress(model.name, model.service)
        model.service.start(warmup=app.ctx.config.warmup, progress=progress)


async def announce(app: Sanic) -> None:
    """Once this process accepts connections: where, and that every model is ready (only the
    process that owns the engines says so; a front-end over an engine process stays quiet)."""
    if app.ctx.drain is None:
        config = app.ctx.config
        startup.log_listening(config.host, config.port)
        app.ctx.announce = asyncio.create_task(
            startup.log_when_ready(app.ctx.models.services, config.warmup)
        )


async def stop_models(app: Sanic) -> None:
    """Drain every model at once (each finishes its queue, up to --drain-timeout); a front-end
    process first waits for its requests in the engine process."""
    app.ctx.state["draining"] = True
    if (announce := getattr(app.ctx, "announce", None)) is not None:
        announce.cancel()
    loop = asyncio.get_running_loop()
    timeout = app.ctx.config.drain_timeout
    if app.ctx.drain is not None:
        await app.ctx.drain(timeout)
    results = await asyncio.gather(
        *(loop.run_in_executor(None, s.close, timeout) for s in app.ctx.models.services)
    )
    log.info("shutdown: %s", "drained" if all(results) else "drain timed out")
    if app.ctx.tracer is not None:
        await loop.run_in_executor(None, app.ctx.tracer.shutdown)  # flush buffered spans


def create_app(
    config: ServerConfig,
    embedders: EngineModel | Sequence[EngineModel],
    *,
    fault_hook: FaultHook | None = None,
) -> Sanic:
    """The app serving `embedders` in this process, one per entry of
    `config.model_configs()`, in order."""
    embedders = [embedders] if isinstance(embedders, EngineModel) else list(embedders)
    metrics = Metrics()
    return build_app(config, build_models(config, embedders, metrics, fault_hook), metrics)


def build_app(
    config: ServerConfig,
    models: ServedModels,
    metrics: Metrics,
    *,
    drain: Callable[[float], Awaitable[bool]] | None = None,
) -> Sanic:
    """The app serving `models` (their services local or over the engine transport);
    `drain(timeout)` runs first at shutdown (a front-end's wait for its requests)."""
    app = Sanic(f"jaxembed_{next(_app_ids)}", configure_logging=False)
    configure(app, config)
    app.ctx.drain = drain
    app.ctx.config = config
    app.ctx.metrics = metrics
    app.ctx.models = models
    app.ctx.media = media_loader(config)
    app.ctx.openapi = openapi_document(config, models)
    app.ctx.state = {"draining": False}
    app.ctx.tracer = None
    if config.otlp_endpoint:  # imported only when asked for (the `tracing` extra)
        try:
            from jaxembed_server.tracing import RequestTracer
        except ImportError as e:
            raise ValueError(
                f"--otlp-endpoint needs OpenTelemetry ({e.name} is missing): "
                'pip install "jaxembed[tracing]"'
            ) from None
        app.ctx.tracer = RequestTracer.to_endpoint(config.otlp_endpoint)
    app.before_server_start(start_models)
    app.after_server_start(announce)
    app.before_server_stop(stop_models)
    middleware.install(app)
    app.add_route(route_embeddings.embeddings, "/v1/embeddings", methods=["POST"])
    app.add_route(route_tokens.tokenize, "/tokenize", methods=["POST"])
    app.add_route(route_tokens.detokenize, "/detokenize", methods=["POST"])
    app.add_route(route_embeddings.invocations, "/invocations", methods=["POST"])
    app.add_route(route_info.models, "/v1/models", methods=["GET"])
    app.add_route(route_info.health, "/health", methods=["GET"])
    app.add_route(route_info.root, "/", methods=["GET"], name="root_info")
    app.add_route(route_info.ready, "/ready", methods=["GET"])
    app.add_route(route_info.metrics, "/metrics", methods=["GET"])
    app.add_route(route_info.openapi, "/openapi.json", methods=["GET"])
    docs_ui.install(app)
    # Infinity's paths (no /v1) for its clients.
    app.add_route(
        route_embeddings.embeddings, "/embeddings", methods=["POST"], name="infinity_embeddings"
    )
    app.add_route(route_info.models, "/models", methods=["GET"], name="infinity_models")
    api_tei.install(app)
    api_cohere.install(app)
    api_rerank.install(app)
    api_score.install(app)
    return app
