"""`jaxembed serve` options and the frozen `ServerConfig` built from them.

Every limit the server enforces is an option here, with its default, so that
`docs` and `--help` show the same numbers the code uses.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

from jaxembed.cli import add_attention_option, mesh_shape_arg
from jaxembed.engine.batching.buckets import DEFAULT_WARMUP_MAX_LEN
from jaxembed.engine.inputs.chat import read_template_option
from jaxembed.engine.request import limits
from jaxembed.parallel.distributed import MODES, DistributedConfig
from jaxembed.parallel.mesh import MeshShape
from jaxembed_server.model_config import (
    ModelConfig,
    expand_routes,
    inherit,
    models_from_file,
    models_from_flags,
)

API_KEY_ENV = "JAXEMBED_API_KEY"


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 30000
    # HTTP front-end processes (parse, validate, tokenise, answer) over one engine process that
    # owns the devices; 1 = one process does everything. None: from the host's cores.
    api_workers: int | None = None
    # The models served (--model, repeatable, or --config); () = the embedded default model,
    # with the per-model options below. Each ModelConfig inherits them (server/model_config.py).
    models: tuple[ModelConfig, ...] = ()
    served_model_names: tuple[str, ...] = ()
    dtype: str | None = None
    api_keys: tuple[str, ...] = ()
    compile_cache: str | None = None
    xla_gpu_autotune_level: int | None = None  # None: XLA's own default
    warmup: bool = True
    token_budget: int | None = None
    batch_sizes: tuple[int, ...] | None = None
    seq_lengths: tuple[int, ...] | None = None
    max_request_bytes: int = 8 * 2**20
    allow_unknown_fields: bool = False  # drop fields no API defines (else a 400 naming them)
    chat_template: str | None = None  # --chat-template, read: the template's text
    trust_request_chat_template: bool = False  # a request's own `chat_template` is rendered
    max_inputs: int = 2048
    max_request_tokens: int = 2048 * 512
    max_queued_requests: int = limits.DEFAULT_MAX_QUEUED_REQUESTS
    max_queued_tokens: int = limits.DEFAULT_MAX_QUEUED_TOKENS
    aging_seconds: float = limits.DEFAULT_AGING_SECONDS
    step_batches: int = limits.DEFAULT_STEP_BATCHES
    drain_timeout: float = 30.0
    request_timeout: float = 1800.0  # seconds a request may take in all; 0 = no limit
    read_timeout: float = 60.0  # seconds to receive a request's headers and body
    keep_alive_timeout: float = 75.0  # idle keep-alive connections close after this
    log_level: str = "info"
    log_format: str = "text"
    otlp_endpoint: str | None = None  # OpenTelemetry traces over OTLP/HTTP; None: off
    cache_mb: float = 128.0  # embedding cache size; 0 disables it
    quantization_ranges: str | None = None  # int8/uint8 ranges ([2, D] .npy or JSON)
    packing: bool | None = None  # short inputs share batch rows; None: where the model allows
    lora: tuple[tuple[str, str], ...] = ()  # (name, path) preloaded adapters
    lora_root: str | None = None  # adapters named by path must lie inside it
    max_loras: int = 8
    max_lora_rank: int = 64
    mesh: MeshShape | None = None  # None: every serving device on `data`
    # Images and videos (models with a vision tower; jaxembed/media_loader.py).
    allow_private_media: bool = False  # fetch URLs whose host is loopback/private/link-local
    media_root: str | None = None  # local media paths must lie inside it; None: paths refused
    max_media_bytes: int = 32 * 2**20  # one download, file or decoded base64
    media_timeout: float = 10.0  # seconds for one URL fetch, redirects included
    max_media_items: int = 64  # images + videos per request
    max_image_pixels: int = 40_000_000
    max_video_seconds: float = 600.0
    max_video_frames: int = 20_000
    max_decode_seconds: float = 30.0  # wall time to decode one video
    distributed: DistributedConfig | None = None  # set by --distributed
    # Attention and long inputs (models/attention.py, docs/attention.md).
    attention: str | None = None  # None: $JAXEMBED_ATTENTION, else auto
    warmup_max_len: int = DEFAULT_WARMUP_MAX_LEN  # longer buckets compile on first use
    chunking: bool = False  # over-long inputs: embed windows and pool them (per request too)
    max_embed_len: int | None = None  # most tokens of one chunked input; None: 16x the model's
    memory_fraction: float = 0.9  # of device memory the parameters + buckets may plan to use
    device_memory_gib: float | None = None  # where the backend does not report its memory

    @property
    def http_processes(self) -> int:
        """Front-end processes to run: --api-workers, else from the cores this process may use
        (1 on a small host, where a second process only competes for the same cores)."""
        if self.api_workers is not None:
            return self.api_workers
        return default_api_workers(len(os.sched_getaffinity(0)))

    def model_configs(self) -> tuple[ModelConfig, ...]:
        """One entry per model (per route of a Router model: `config_from_args` expanded
        them once, model_config.expand_routes)."""
        return self.models or (inherit(self, served_model_names=self.served_model_names),)


def default_api_workers(cores: int) -> int:
    """Half the cores (the engine process, the tokenizer's threads and XLA's own want the
    rest), at most 16; one process on up to 4 cores."""
    return 1 if cores <= 4 else min(cores // 2, 16)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _int_tuple(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("values must be positive")
    return values


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    d = ServerConfig()
    for add in (
        _add_model_and_access_arguments,
        _add_compile_and_attention_arguments,
        _add_limit_arguments,
        _add_time_arguments,
        _add_batching_and_logging_arguments,
        _add_lora_arguments,
        _add_media_arguments,
        _add_multihost_arguments,
    ):
        add(p, d)


def _add_model_and_access_arguments(p: argparse.ArgumentParser, d: ServerConfig) -> None:
    """Address, model, dtype, API keys."""
    p.add_argument("--host", default=d.host, help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=d.port, help="TCP port to listen on")
    p.add_argument(
        "--api-workers",
        type=_positive_int,
        default=None,
        metavar="N",
        help="HTTP front-end processes (each parses, validates, tokenises and answers) in front "
        "of one engine process that owns the devices; 1 = a single process. Default: half the "
        "cores, at most 16 (1 on hosts of up to 4 cores)",
    )
    p.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="[NAME=]SPEC",
        help="HF or converted model directory, or a card name (default: embedded "
        "all-MiniLM-L6-v2); repeat as NAME=SPEC to serve several models, routed by `model`",
    )
    p.add_argument(
        "--config",
        default=None,
        help="YAML or JSON file listing the models with per-model options (format and a "
        "complete example: docs/operations.md, 'The --config file')",
    )
    p.add_argument(
        "--chat-template",
        default=None,
        metavar="FILE|TEMPLATE",
        help="a Jinja chat template (a file, or the template itself) that renders `messages` "
        "instead of the model directory's own, or for a model that has none (vLLM's option)",
    )
    p.add_argument(
        "--trust-request-chat-template",
        action="store_true",
        help="render a request's own `chat_template` (vLLM's option; off by default: a "
        "template is code the server runs, sandboxed but unbounded in time)",
    )
    p.add_argument(
        "--served-model-name",
        action="append",
        default=[],
        help="name clients send as `model` (repeatable; default: the card's names)",
    )
    p.add_argument(
        "--dtype", choices=["float32", "bfloat16"], default=None, help="default: the card's"
    )
    p.add_argument(
        "--api-key",
        action="append",
        default=[],
        help=f"require `Authorization: Bearer KEY` (repeatable; also ${API_KEY_ENV}, comma-separated)",
    )
    p.add_argument("--api-key-file", default=None, help="file with one API key per line")
    p.add_argument(
        "--compile-cache",
        default=None,
        help="persistent XLA cache dir (default $JAXEMBED_HOME/xla, ~/.cache/jaxembed/xla)",
    )


def _add_compile_and_attention_arguments(p: argparse.ArgumentParser, d: ServerConfig) -> None:
    """Compilation, warm-up, the bucket grid, attention, long inputs, device memory."""
    p.add_argument(
        "--no-warmup", dest="warmup", action="store_false", help="compile buckets lazily"
    )
    p.add_argument(
        "--xla-gpu-autotune-level",
        type=int,
        choices=range(5),
        default=None,
        metavar="0-4",
        help="XLA's GPU autotuning (0: none, faster compiles; 4: every candidate kernel). "
        "Default: XLA's own. On an H200, 0 halved the compile time per bucket (~2 s to ~1 s); "
        "its effect on throughput is not yet measured. Part of the compile-cache key: give "
        "`jaxembed warmup` the same value",
    )
    p.add_argument(
        "--warmup-max-len",
        type=int,
        default=d.warmup_max_len,
        help="warm-up compiles buckets up to this length; longer ones compile on first use",
    )
    add_attention_option(p)
    p.add_argument(
        "--chunking",
        action=argparse.BooleanOptionalAction,
        default=d.chunking,
        help="embed over-long inputs as windows of the model's length, pooled by token count "
        "(the default for requests that do not set `chunking`)",
    )
    p.add_argument(
        "--max-embed-len",
        type=int,
        default=None,
        help="most tokens of one chunked input (default: 16x the model's maximum)",
    )
    p.add_argument(
        "--memory-fraction",
        type=float,
        default=d.memory_fraction,
        help="share of device memory that parameters and the largest bucket may plan to use",
    )
    p.add_argument(
        "--device-memory-gib",
        type=float,
        default=None,
        help="device memory per device, for backends that do not report it (e.g. the CPU)",
    )
    p.add_argument(
        "--token-budget", type=int, default=None, help="most (padded) tokens per device batch"
    )
    p.add_argument(
        "--batch-sizes", type=_int_tuple, default=None, help="bucket batch sizes, e.g. 1,2,4,8"
    )
    p.add_argument("--seq-lengths", type=_int_tuple, default=None, help="bucket sequence lengths")


def _add_time_arguments(p: argparse.ArgumentParser, d: ServerConfig) -> None:
    """How long a request, a slow client, an idle connection and a drain may take."""
    p.add_argument(
        "--drain-timeout",
        type=float,
        default=d.drain_timeout,
        help="seconds queued work may take to finish on SIGTERM",
    )
    p.add_argument(
        "--request-timeout",
        type=float,
        default=d.request_timeout,
        help="seconds a request may take from arrival to answer (0: no limit); past it a 504 "
        "`timeout`, and requests that cannot finish in time at the measured speed get a 413",
    )
    p.add_argument(
        "--read-timeout",
        type=float,
        default=d.read_timeout,
        help="seconds for a client to send a request's headers and body (slow clients: 408)",
    )
    p.add_argument(
        "--keep-alive-timeout",
        type=float,
        default=d.keep_alive_timeout,
        help="seconds an idle keep-alive connection stays open (above a load balancer's 60)",
    )


def _add_limit_arguments(p: argparse.ArgumentParser, d: ServerConfig) -> None:
    """Request and queue limits, scheduling, time limits, the cache."""
    p.add_argument(
        "--max-request-bytes",
        type=int,
        default=d.max_request_bytes,
        help="largest request body (413 beyond)",
    )
    p.add_argument(
        "--allow-unknown-fields",
        action="store_true",
        help="accept request fields no API defines (dropped, with a Warning header and a log "
        "line); by default they are a 400 naming the field",
    )
    p.add_argument("--max-inputs", type=int, default=d.max_inputs, help="inputs per request")
    p.add_argument(
        "--max-request-tokens",
        type=int,
        default=d.max_request_tokens,
        help="tokens of one request, all inputs together (413 beyond)",
    )
    p.add_argument(
        "--max-queued-requests",
        type=int,
        default=d.max_queued_requests,
        help="requests waiting per model; a full queue answers 503 with Retry-After",
    )
    p.add_argument(
        "--max-queued-tokens",
        type=int,
        default=d.max_queued_tokens,
        help="tokens waiting per model; past it, 503 with Retry-After",
    )
    p.add_argument(
        "--aging-seconds",
        type=float,
        default=d.aging_seconds,
        help="waiting this long raises a request's priority by one step",
    )
    p.add_argument(
        "--step-batches",
        type=int,
        default=d.step_batches,
        help="token budgets the dispatcher gathers per step: larger sorts rows better, "
        "smaller lets urgent requests overtake sooner",
    )
    p.add_argument(
        "--quantization-ranges",
        default=None,
        help="int8/uint8 ranges per dimension, a [2, D] .npy or JSON [[min...], [max...]] "
        "(default: calibrated once per model on a fixed corpus, cached in $JAXEMBED_HOME)",
    )
    p.add_argument(
        "--cache-mb",
        type=float,
        default=d.cache_mb,
        help="LRU cache of embeddings by exact token ids, in MiB (0 disables)",
    )


def _add_batching_and_logging_arguments(p: argparse.ArgumentParser, d: ServerConfig) -> None:
    """Packing, logs, the device mesh."""
    p.add_argument(
        "--packing",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="pack several short inputs into one row of a batch (attention kept within each "
        "input); default: on for text models with cls/mean/last-token pooling, off with LoRA",
    )
    p.add_argument("--log-level", default=d.log_level, help="debug, info, warning or error")
    p.add_argument(
        "--log-format",
        choices=["text", "json"],
        default=d.log_format,
        help="json: one object per line with the request id (for log pipelines)",
    )
    p.add_argument(
        "--otlp-endpoint",
        default=None,
        help="export OpenTelemetry traces (a span per request, child spans per phase) to this "
        "OTLP/HTTP collector, e.g. http://127.0.0.1:4318 (needs the `tracing` extra)",
    )
    p.add_argument(
        "--mesh",
        type=mesh_shape_arg,
        default=None,
        help="device mesh, e.g. data=2,model=4 or model=8 (default: every device on data)",
    )


def _add_lora_arguments(p: argparse.ArgumentParser, d: ServerConfig) -> None:
    """LoRA adapters."""
    g = p.add_argument_group("LoRA adapters")
    g.add_argument(
        "--lora",
        action="append",
        type=_name_path,
        default=[],
        metavar="NAME=PATH",
        help="preload a PEFT LoRA adapter, selected with model=BASE:NAME (repeatable)",
    )
    g.add_argument(
        "--lora-root",
        default=None,
        help="allow requests to load adapters by path (lora_path), only from inside this directory",
    )
    g.add_argument("--max-loras", type=int, default=d.max_loras, help="adapters resident at once")
    g.add_argument(
        "--max-lora-rank", type=int, default=d.max_lora_rank, help="largest adapter rank served"
    )


def _add_media_arguments(p: argparse.ArgumentParser, d: ServerConfig) -> None:
    """Images and videos (multimodal models)."""
    g = p.add_argument_group("images and videos (multimodal models)")
    g.add_argument(
        "--allow-private-media",
        action="store_true",
        help="also fetch URLs on loopback, private and link-local addresses (off: SSRF protection)",
    )
    g.add_argument(
        "--media-root",
        default=None,
        help="accept local file paths and file:// URLs, only from inside this directory",
    )
    g.add_argument(
        "--max-media-bytes",
        type=int,
        default=d.max_media_bytes,
        help="one image/video download, file or decoded base64",
    )
    g.add_argument(
        "--media-timeout", type=float, default=d.media_timeout, help="seconds per URL fetch"
    )
    g.add_argument(
        "--max-media-items", type=int, default=d.max_media_items, help="images+videos per request"
    )
    g.add_argument(
        "--max-image-pixels",
        type=int,
        default=d.max_image_pixels,
        help="width x height limit, checked before decoding (decompression bombs)",
    )
    g.add_argument(
        "--max-video-seconds",
        type=float,
        default=d.max_video_seconds,
        help="longest video accepted",
    )
    g.add_argument(
        "--max-video-frames", type=int, default=d.max_video_frames, help="frames in a video stream"
    )
    g.add_argument(
        "--max-decode-seconds",
        type=float,
        default=d.max_decode_seconds,
        help="wall time to decode one video",
    )


def _add_multihost_arguments(p: argparse.ArgumentParser, d: ServerConfig) -> None:
    """Multi-host process groups."""
    g = p.add_argument_group("multi-host (TPU pod slices, several GPU hosts)")
    g.add_argument(
        "--distributed",
        action="store_true",
        help="join a process group with jax.distributed.initialize (see docs/deploy.md)",
    )
    g.add_argument(
        "--multihost",
        choices=MODES,
        default="global",
        help="global: one model over all hosts, process 0 serves HTTP; "
        "replica: every host serves its own copy on its local devices",
    )
    g.add_argument("--coordinator-address", default=None, help="host:port of process 0")
    g.add_argument(
        "--num-processes", type=int, default=None, help="processes in the group (else detected)"
    )
    g.add_argument(
        "--process-id", type=int, default=None, help="this process's index (else detected)"
    )
    g.add_argument(
        "--heartbeat-timeout",
        type=float,
        default=5.0,
        help="seconds without heartbeats (JAX's coordination service) before a process "
        "counts as lost and the leader reports not ready",
    )


def _name_path(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path or ":" in name:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH (NAME without ':'), got {text!r}")
    return name, path


def read_api_keys(cli_keys: list[str], key_file: str | None) -> tuple[str, ...]:
    keys = [k for k in cli_keys if k]
    keys += [k.strip() for k in os.environ.get(API_KEY_ENV, "").split(",") if k.strip()]
    if key_file:
        keys += [line.strip() for line in Path(key_file).read_text().splitlines() if line.strip()]
    return tuple(dict.fromkeys(keys))


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    fields = {f.name for f in dataclasses.fields(ServerConfig)}
    values = {k: v for k, v in vars(args).items() if k in fields}
    values["served_model_names"] = tuple(args.served_model_name)
    values["api_keys"] = read_api_keys(args.api_key, args.api_key_file)
    values["lora"] = tuple(args.lora)
    if args.chat_template is not None:
        values["chat_template"] = read_template_option(args.chat_template)
    values["models"] = ()
    values["distributed"] = (
        DistributedConfig.from_env(
            coordinator_address=args.coordinator_address,
            num_processes=args.num_processes,
            process_id=args.process_id,
            mode=args.multihost,
            heartbeat_timeout=args.heartbeat_timeout,
        )
        if args.distributed
        else None
    )
    config = ServerConfig(**values)
    if args.config and args.model:
        raise ValueError("give the models with --model or in --config, not both")
    if args.config:
        models = models_from_file(config, args.config)
    else:
        models = models_from_flags(config, args.model)
    return dataclasses.replace(config, models=expand_routes(models))
