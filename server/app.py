"""Routes of the jaxembed server: /v1/embeddings, /tokenize, /v1/models, /health, /ready, /metrics, docs.

Handlers validate everything before anything is queued, hand token lists to
the `Batcher` and await its future; no device work runs on the event loop.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import logging
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from pydantic import ValidationError
from sanic import Request, Sanic
from sanic.exceptions import SanicException
from sanic.response import HTTPResponse, raw, text

import jaxembed
from jaxembed.engine.batcher import Batcher, FaultHook, RequestProgress
from jaxembed.engine.cache import EmbeddingCache, assemble
from jaxembed.engine.embedder import Embedder
from jaxembed.engine.vision import ImageWorkload
from jaxembed.errors import JaxEmbedError
from jaxembed.media import MediaLimits
from jaxembed.pooling import truncate_dimensions
from jaxembed_server.adapters import AdapterResolver
from jaxembed_server.auth import OPEN_PATHS, check_api_key
from jaxembed_server.config import ServerConfig
from jaxembed_server.errors import (
    APIError,
    from_library_error,
    from_validation_error,
    invalid,
    model_not_found,
    unavailable,
)
from jaxembed_server.logs import request_id_var
from jaxembed_server.media import MediaLoader, MediaPolicy
from jaxembed_server.metrics import Metrics
from jaxembed_server.multimodal import MultimodalPipeline
from jaxembed_server.openapi import ServedModel, build_openapi, docs_page
from jaxembed_server.protocol import EmbeddingRequest, MultimodalItem, TokenizeRequest

log = logging.getLogger("jaxembed.server")
access = logging.getLogger("jaxembed.access")
QUIET_ROUTES = frozenset({"/health", "/ready", "/metrics"})
MAX_REQUEST_ID = 128


def _request_id(client_value: str | None) -> str:
    """The client's X-Request-Id if it is a sane token, else a fresh one (ids end up in logs)."""
    if (
        client_value
        and len(client_value) <= MAX_REQUEST_ID
        and client_value.isprintable()
        and client_value.isascii()
    ):
        return client_value
    return uuid.uuid4().hex


_app_ids = itertools.count()
# Tokenising more characters than this moves off the event loop (HF tokenizers release the GIL).
INLINE_TOKENIZE_CHARS = 4096


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> HTTPResponse:
    return raw(
        orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY),
        status=status,
        headers=headers,
        content_type="application/json",
    )


def error_response(error: APIError) -> HTTPResponse:
    return json_response(error.body(), status=error.status, headers=error.headers)


def _parse_json(request: Request) -> dict:
    try:
        body = orjson.loads(request.body or b"")
    except orjson.JSONDecodeError:
        raise invalid("the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise invalid("the request body must be a JSON object")
    return body


def _notice_disconnects(request: Request) -> None:
    """Let a client's disconnect cancel the handler while it waits for the device.

    Sanic pauses reading the socket once a large body fills its receive
    buffer and leaves it paused while the handler runs, so the client's FIN
    would go unseen until we answer. With reading resumed, connection loss
    cancels the handler, and the Batcher drops the request's queued rows.
    """
    transport = request.transport
    if transport is not None and not transport.is_closing():
        transport.resume_reading()


def encode_embeddings(vectors: np.ndarray, encoding_format: str) -> list[dict]:
    if encoding_format == "base64":
        # Little-endian float32, exactly what the openai client decodes with np.frombuffer.
        le = vectors.astype("<f4", copy=False)
        return [
            {
                "object": "embedding",
                "embedding": base64.b64encode(le[i].tobytes()).decode("ascii"),
                "index": i,
            }
            for i in range(len(le))
        ]
    return [
        {"object": "embedding", "embedding": vectors[i], "index": i} for i in range(len(vectors))
    ]


# Sanic's own response cut comes this long after --request-timeout, so that ours answers first.
RESPONSE_MARGIN_SECONDS = 60


def create_app(
    config: ServerConfig, embedder: Embedder, *, fault_hook: FaultHook | None = None
) -> Sanic:
    # Logging is configured once by `jaxembed serve` (server/logs.py), not by Sanic.
    app = Sanic(f"jaxembed_{next(_app_ids)}", configure_logging=False)
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
    metrics = Metrics()
    queueing = dict(
        max_queued_requests=config.max_queued_requests,
        max_queued_tokens=config.max_queued_tokens,
        aging_seconds=config.aging_seconds,
        step_batches=config.step_batches,
        on_batch=metrics.observe_batch,
    )
    batcher = Batcher(embedder, fault_hook=fault_hook, **queueing)
    # Images (and video frames) have their own batcher: they share the device, not batches.
    image_batcher = None
    if embedder.images is not None:
        image_batcher = Batcher(ImageWorkload(embedder.images), **queueing)
    batchers = [b for b in (batcher, image_batcher) if b is not None]
    limits = MediaLimits(
        max_image_pixels=config.max_image_pixels,
        max_video_seconds=config.max_video_seconds,
        max_video_frames=config.max_video_frames,
        max_decode_seconds=config.max_decode_seconds,
    )
    cache = EmbeddingCache(int(config.cache_mb * 2**20))

    def count_cache(hit: bool) -> None:
        (metrics.cache_hits if hit else metrics.cache_misses).inc()

    multimodal = MultimodalPipeline(
        embedder,
        image_batcher,
        MediaLoader(
            MediaPolicy(
                allow_private=config.allow_private_media,
                root=Path(config.media_root).resolve() if config.media_root else None,
                max_bytes=config.max_media_bytes,
                timeout=config.media_timeout,
            )
        ),
        limits,
        max_media_items=config.max_media_items,
        cache=cache,
        on_cache=count_cache,
    )
    card = embedder.card
    served = list(dict.fromkeys(config.served_model_names or card.names))
    openapi = build_openapi(
        jaxembed.__version__,
        auth=bool(config.api_keys),
        served=ServedModel(
            names=tuple(served),
            dimensions=embedder.dimensions,
            vocab_size=embedder.tokenizer.vocab_size,
            max_inputs=config.max_inputs,
            instructions=bool(card.instruction_template),
            lora=bool(config.lora or config.lora_root),
        ),
    )
    state = {"draining": False}

    resolver = None
    if config.lora or config.lora_root:
        resolver = AdapterResolver(
            {name: Path(path) for name, path in config.lora},
            Path(config.lora_root) if config.lora_root else None,
        )

    async def embed_cached(
        token_lists: list,
        priority: int,
        adapter: str | None = None,
        slot: int = 0,
        progress: RequestProgress | None = None,
    ) -> np.ndarray:
        """Rows seen before come from the cache; only distinct new sequences reach the device."""
        lookup = cache.lookup(token_lists, namespace=adapter or "")
        computed = np.empty((0, embedder.dimensions), dtype=np.float32)
        if progress is not None:
            progress.rows_done += len(lookup.hits)
        if lookup.to_compute:
            rows = [token_lists[i] for i in lookup.to_compute]
            check_time_budget(sum(len(t) for t in rows))
            computed = await batcher.embed(
                rows, priority=priority, adapter_slot=slot, progress=progress
            )
            cache.store([lookup.keys[i] for i in lookup.to_compute], computed)
        metrics.cache_hits.inc(len(lookup.hits))
        metrics.cache_misses.inc(len(token_lists) - len(lookup.hits))
        return assemble(lookup, computed, embedder.dimensions)

    def check_time_budget(tokens: int) -> None:
        """Admission: refuse up front what cannot finish within --request-timeout even with
        the device to itself, at the throughput measured so far (docs/operations.md)."""
        if not config.request_timeout:
            return
        request = Request.get_current()
        expected = batcher.expected_seconds(tokens)
        left = config.request_timeout - (time.perf_counter() - request.ctx.start)
        if expected is None or expected <= left:
            return
        rate = tokens / expected
        raise APIError(
            413,
            f"the request's {tokens} uncached tokens would take about {expected:.0f} s at the "
            f"{rate:.0f} tokens/s this server measures, more than its --request-timeout of "
            f"{config.request_timeout:g} s; split it into requests of at most about "
            f"{int(rate * config.request_timeout * 0.5)} tokens",
            param="input",
            code="request_too_large",
        )

    async def within_request_timeout(work, request: Request, progress: RequestProgress, n: int):
        """Run the request's work under --request-timeout; past it, a 504 `timeout` whose
        undispatched rows never reach the device (the batcher drops a cancelled job)."""
        if not config.request_timeout:
            return await work
        left = config.request_timeout - (time.perf_counter() - request.ctx.start)
        try:
            return await asyncio.wait_for(work, max(left, 0.001))
        except TimeoutError:
            metrics.request_timeouts.inc()
            log.warning(
                "request timed out: --request-timeout %g s reached with %d of %d inputs embedded",
                config.request_timeout,
                progress.rows_done,
                n,
            )
            raise APIError(
                504,
                f"the request did not finish within this server's --request-timeout of "
                f"{config.request_timeout:g} s ({progress.rows_done} of {n} inputs were "
                "embedded and discarded); send smaller requests (fewer or shorter inputs per "
                "request) or ask the operator to raise --request-timeout",
                type="server_error",
                code="timeout",
            ) from None

    def not_ready_reason() -> str | None:
        """Readiness: warm-up done, not draining, and (multi-host) every follower alive."""
        if state["draining"]:
            return "shutting down"
        if not all(b.ready.is_set() for b in batchers):
            return "warming up"
        return embedder.unhealthy_reason()

    # -- lifecycle ----------------------------------------------------------------------------

    @app.before_server_start
    async def _start(app: Sanic) -> None:
        def progress(i: int, n: int, bucket) -> None:
            if i == 1 or i == n or i % 10 == 0:
                log.info(
                    "warm-up: compiled %d/%d buckets (last %dx%d)", i, n, bucket.batch, bucket.seq
                )

        for b in batchers:
            b.start(warmup=config.warmup, warmup_progress=progress)

    @app.before_server_stop
    async def _stop(app: Sanic) -> None:
        state["draining"] = True
        loop = asyncio.get_running_loop()
        results = await asyncio.gather(
            *(loop.run_in_executor(None, b.close, config.drain_timeout) for b in batchers)
        )
        multimodal.close()
        log.info("shutdown: %s", "drained" if all(results) else "drain timed out")

    # -- middleware ---------------------------------------------------------------------------

    @app.on_request
    async def _before(request: Request):
        request.ctx.start = time.perf_counter()
        request.ctx.request_id = _request_id(request.headers.get("x-request-id"))
        request_id_var.set(request.ctx.request_id)
        if request.path not in OPEN_PATHS:
            try:
                check_api_key(request.headers.get("authorization"), config.api_keys)
            except APIError as e:
                return error_response(e)
        return None

    @app.on_response
    async def _after(request: Request, response: HTTPResponse):
        response.headers["X-Request-Id"] = getattr(request.ctx, "request_id", "")
        route = "/" + request.route.path.lstrip("/") if request.route else "unmatched"
        metrics.requests.labels(route=route, status=str(response.status)).inc()
        seconds = time.perf_counter() - request.ctx.start if hasattr(request.ctx, "start") else 0.0
        metrics.latency.labels(route=route).observe(seconds)
        # The access line; probes and scrapes only at debug level.
        access.log(
            logging.DEBUG if route in QUIET_ROUTES else logging.INFO,
            "%s %s %d %.1f ms",
            request.method,
            request.path,
            response.status,
            seconds * 1000,
            extra={
                "request_id": getattr(request.ctx, "request_id", None),
                "method": request.method,
                "path": request.path,
                "status": response.status,
                "duration_ms": round(seconds * 1000, 2),
            },
        )
        if response.status >= 400:
            try:
                code = orjson.loads(response.body)["error"].get("code") or str(response.status)
            except Exception:
                code = str(response.status)
            metrics.errors.labels(code=code).inc()

    # -- errors -------------------------------------------------------------------------------

    @app.exception(APIError)
    async def _api_error(request: Request, error: APIError):
        return error_response(error)

    @app.exception(SanicException)
    async def _sanic_error(request: Request, error: SanicException):
        status = getattr(error, "status_code", 500) or 500
        kind = "invalid_request_error" if status < 500 else "server_error"
        codes = {
            404: "not_found",
            405: "method_not_allowed",
            413: "request_too_large",
            408: "timeout",
        }
        message = str(error) if status < 500 else "internal error"
        if status == 413:
            message = f"the request body is larger than {config.max_request_bytes} bytes"
        # 405 carries `Allow` (RFC 9110), which Sanic puts on the exception's headers.
        headers = {
            k: v for k, v in (getattr(error, "headers", None) or {}).items() if k.lower() == "allow"
        }
        return error_response(
            APIError(status, message, type=kind, code=codes.get(status), headers=headers)
        )

    @app.exception(Exception)
    async def _unexpected(request: Request, error: Exception):
        log.exception("unexpected error on %s", request.path)
        return error_response(APIError(500, "internal error", type="server_error"))

    # -- helpers ------------------------------------------------------------------------------

    def check_model(name: str | None) -> tuple[str, str | None]:
        """(the model name to answer with, the adapter named by `base:adapter` or None)."""
        if name is None:
            return served[0], None
        if name in served:
            return name, None
        base, sep, adapter = name.partition(":")
        if sep and base in served:
            if resolver is None:
                raise invalid(
                    "LoRA is not enabled on this server", param="model", code="lora_not_enabled"
                )
            return name, adapter
        raise model_not_found(name, served)

    async def acquire_adapter(spec: str, param: str) -> tuple[str, int]:
        """Resolve, load if needed (off the event loop) and pin an adapter: (name, slot)."""
        name, path = resolver.resolve(spec, param)
        loop = asyncio.get_running_loop()
        slot = await loop.run_in_executor(None, embedder.adapter_slot, name, path)
        return name, slot

    async def off_loop_for_long_text(items: Any, work: Callable[[], Any]) -> Any:
        """Tokenise short inputs inline, long ones on a worker thread (the loop stays free)."""
        size = (
            len(items)
            if isinstance(items, str)
            else sum(len(x) if isinstance(x, str) else 1 for x in items)
        )
        if size <= INLINE_TOKENIZE_CHARS:
            return work()
        return await asyncio.get_running_loop().run_in_executor(None, work)

    async def tokenize(
        items: Any, *, truncate: bool, direction: str, prompt: str | None, instruction: str | None
    ) -> list[np.ndarray]:
        return await off_loop_for_long_text(
            items,
            lambda: embedder.tokenize(
                items,
                truncate=truncate,
                truncation_direction=direction,
                prompt_name=prompt,
                instruction=instruction,
            ),
        )

    async def tokenize_windows(items: Any, prompt: str | None, instruction: str | None):
        return await off_loop_for_long_text(
            items,
            lambda: embedder.tokenize_windows(items, prompt_name=prompt, instruction=instruction),
        )

    def check_size(items: Any) -> None:
        count = 1 if isinstance(items, str) else len(items)
        if count == 0:
            raise invalid("'input' must not be empty", param="input")
        if count > config.max_inputs:
            raise invalid(
                f"'input' has {count} items; the maximum is {config.max_inputs}", param="input"
            )

    def check_tokens(token_lists: list[np.ndarray]) -> int:
        total = sum(len(t) for t in token_lists)
        if total > config.max_request_tokens:
            raise APIError(
                413,
                f"the request has {total} tokens; the maximum per request is {config.max_request_tokens}",
                param="input",
                code="request_too_large",
            )
        return total

    # -- routes -------------------------------------------------------------------------------

    def check_serving() -> None:
        """503 while draining or while the engine cannot run (a lost follower host)."""
        if state["draining"]:
            raise APIError(
                503,
                "the server is shutting down",
                type="server_error",
                code="shutting_down",
                headers={"Retry-After": "5"},
            )
        if reason := embedder.unhealthy_reason():
            raise unavailable(f"the model is not available: {reason}", retry_after=5)

    def requested_adapter(req: EmbeddingRequest) -> tuple[str, str | None, str]:
        """(model name to answer with, adapter spec or None, the param that named it)."""
        model, adapter_spec = check_model(req.model)
        if req.lora_path is None:
            return model, adapter_spec, "model"
        if resolver is None:
            raise invalid(
                "LoRA is not enabled on this server", param="lora_path", code="lora_not_enabled"
            )
        if adapter_spec is not None and adapter_spec != req.lora_path:
            raise invalid("model names one adapter and lora_path another", param="lora_path")
        return model, req.lora_path, "lora_path"

    def embeddings_response(req: EmbeddingRequest, model: str, vectors: np.ndarray, total: int):
        metrics.inputs.inc(len(vectors))
        metrics.tokens.inc(total)
        if req.user:
            log.info(
                "embedded %d inputs (%d tokens) for user %s",
                len(vectors),
                total,
                req.user,
                extra={"user": req.user, "inputs": len(vectors), "tokens": total},
            )
        return json_response(
            {
                "object": "list",
                "data": encode_embeddings(vectors, req.encoding_format),
                "model": model,
                "usage": {"prompt_tokens": total, "total_tokens": total},
            }
        )

    @app.post("/v1/embeddings")
    async def embeddings(request: Request):
        check_serving()
        _notice_disconnects(request)
        try:
            req = EmbeddingRequest.model_validate(_parse_json(request))
        except ValidationError as e:
            raise from_validation_error(e) from None
        model, adapter_spec, param = requested_adapter(req)
        items: Any = req.input
        check_size(items)

        progress = RequestProgress()

        async def embed_token_lists(token_lists: list[np.ndarray]) -> np.ndarray:
            if adapter_spec is None:
                return await embed_cached(token_lists, req.priority, progress=progress)
            adapter, slot = await acquire_adapter(adapter_spec, param)
            try:
                identity = embedder.lora_bank.identity(adapter)  # pinned: stable here
                return await embed_cached(token_lists, req.priority, identity, slot, progress)
            finally:
                embedder.lora_bank.release(adapter)

        chunking = config.chunking if req.chunking is None else req.chunking

        async def embed_texts(texts: Any) -> tuple[np.ndarray, list[int]]:
            if chunking:  # over-long inputs → windows, pooled back by the engine
                plan = await tokenize_windows(texts, req.input_type, req.instruction)
                check_tokens(plan.windows)
                vectors = await embed_token_lists(plan.windows)
                return plan.combine(vectors, card.normalize), plan.token_counts
            token_lists = await tokenize(
                texts,
                truncate=req.truncate,
                direction=req.truncation_direction,
                prompt=req.input_type,
                instruction=req.instruction,
            )
            check_tokens(token_lists)
            return await embed_token_lists(token_lists), [len(t) for t in token_lists]

        async def compute() -> tuple[np.ndarray, int]:
            embedder.check_dimensions(req.dimensions)
            if isinstance(items, list) and items and isinstance(items[0], MultimodalItem):
                multimodal.check(items, model)
                return await multimodal.embed(
                    items, embed_texts, priority=req.priority, video_frames=req.video_frames
                )
            vectors, counts = await embed_texts(items)
            return vectors, sum(counts)

        inputs = 1 if isinstance(items, str) else len(items)
        try:
            vectors, total = await within_request_timeout(compute(), request, progress, inputs)
        except JaxEmbedError as e:
            raise from_library_error(e) from None
        vectors = truncate_dimensions(vectors, req.dimensions, card.normalize)
        return embeddings_response(req, model, vectors, total)

    @app.post("/tokenize")
    async def tokenize_route(request: Request):
        try:
            req = TokenizeRequest.model_validate(_parse_json(request))
        except ValidationError as e:
            raise from_validation_error(e) from None
        check_model(req.model)  # an adapter does not change tokenisation
        check_size(req.input)
        try:
            token_lists = await tokenize(
                req.input,
                truncate=req.truncate,
                direction=req.truncation_direction,
                prompt=req.input_type,
                instruction=req.instruction,
            )
        except JaxEmbedError as e:
            raise from_library_error(e) from None
        total = check_tokens(token_lists)
        return json_response(
            {
                "tokens": [t.tolist() for t in token_lists],
                "count": total,
                "max_model_len": card.max_length,
            }
        )

    @app.get("/v1/models")
    async def models(request: Request):
        created = int(time.time())
        common = {
            "object": "model",
            "created": created,
            "owned_by": "jaxembed",
            "dimensions": card.dimensions,
            "max_model_len": card.max_length,
            "modalities": list(card.modalities),
        }
        data = [{"id": name, **common} for name in served]
        if resolver is not None:  # adapters: preloaded and currently resident ones
            names = dict.fromkeys([*resolver.preloaded, *embedder.lora_bank.loaded()])
            data += [
                {"id": f"{served[0]}:{name}", **common, "parent": served[0], "root": name}
                for name in names
            ]
        return json_response({"object": "list", "data": data})

    @app.get("/health")
    async def health(request: Request):
        return text("ok")

    @app.get("/ready")
    async def ready(request: Request):
        reason = not_ready_reason()
        metrics.ready.set(0 if reason else 1)
        return text(f"not ready: {reason}" if reason else "ready", status=503 if reason else 200)

    @app.get("/metrics")
    async def metrics_route(request: Request):
        metrics.queue_requests.set(sum(b.queued_requests for b in batchers))
        metrics.queue_tokens.set(sum(b.queued_tokens for b in batchers))
        metrics.active_requests.set(sum(b.active_requests for b in batchers))
        metrics.loop_tasks.set(len(asyncio.all_tasks()))
        metrics.cache_bytes.set(cache.size_bytes)
        metrics.lazy_compiles.set(embedder.runner.lazy_compiles)
        metrics.ready.set(0 if not_ready_reason() else 1)
        return raw(metrics.render(), content_type="text/plain; version=0.0.4")

    @app.get("/openapi.json")
    async def openapi_route(request: Request):
        return json_response(openapi)

    @app.get("/docs")
    async def docs(request: Request):
        return raw(docs_page(openapi).encode(), content_type="text/html; charset=utf-8")

    return app
