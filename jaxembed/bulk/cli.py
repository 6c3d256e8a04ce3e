"""`jaxembed embed-dataset INPUT... --output DIR`: the command line of jaxembed/bulk/job.py."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

from jaxembed.bulk.sources import FORMATS
from jaxembed.quantization import PRECISIONS


def add_parser(sub, add_model_options: Callable[[argparse.ArgumentParser], None]) -> None:
    """`embed-dataset` on `sub`; `add_model_options`: the --model/--dtype/--compile-cache
    options every command of jaxembed/cli.py shares."""
    p = sub.add_parser(
        "embed-dataset",
        help="embed a corpus (JSONL, Parquet, CSV/TSV, text, HF datasets) into Parquet shards",
        description=(
            "Embed every row of the inputs into Parquet shards under --output (id, embedding, "
            "tokens), with a manifest and an errors file per shard. Rerun the same command "
            "after a crash to resume: finished shards are skipped, every row lands once."
        ),
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="files or datasets directories")
    p.add_argument("--output", required=True, help="output directory (created)")
    p.add_argument("--text-column", default="text", help="the column (field) to embed")
    p.add_argument("--id-column", default=None, help="the id column (default: the row number)")
    p.add_argument(
        "--image-column",
        default=None,
        help="image models: embed this column's images (paths, http(s) URLs, data URIs)",
    )
    p.add_argument(
        "--media-root",
        default=None,
        help="local image paths are read only inside this directory (relative ones from it)",
    )
    p.add_argument(
        "--allow-private-media",
        action="store_true",
        help="also fetch image URLs on loopback/private addresses",
    )
    p.add_argument("--input-format", choices=FORMATS, default=None, help="default: by suffix")
    p.add_argument("--shard-rows", type=int, default=50_000, help="rows per output shard")
    p.add_argument("--batch-rows", type=int, default=1024, help="rows per engine call")
    p.add_argument("--dimensions", type=int, default=None, help="matryoshka truncation")
    p.add_argument(
        "--prompt", default=None, help="input type or prompt name of the card (query, document)"
    )
    p.add_argument("--instruction", default=None, help="fills the card's instruction template")
    p.add_argument("--truncate", action="store_true", help="cut over-long texts (else bad rows)")
    p.add_argument(
        "--chunking", action="store_true", help="embed over-long texts as pooled windows"
    )
    p.add_argument("--precision", choices=PRECISIONS, default="float32")
    p.add_argument("--task", default=None, help="a built-in task adapter (jina-embeddings-v3)")
    p.add_argument("--adapter", default=None, help="a PEFT LoRA adapter directory")
    p.add_argument(
        "--sink",
        action="append",
        default=[],
        help="also write to a vector database: lancedb://DIR[#TABLE] (repeatable)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_ray_options(p)
    add_model_options(p)
    p.set_defaults(func=run)


def _add_ray_options(p: argparse.ArgumentParser) -> None:
    ray = p.add_argument_group("Ray Data (many hosts; `pip install 'jaxembed[ray]'`)")
    ray.add_argument(
        "--ray",
        nargs="?",
        const="",
        default=None,
        metavar="ADDRESS",
        help="run the shards on Ray actors: the cluster at ADDRESS (ray://..., or auto), "
        "$RAY_ADDRESS, or a local cluster",
    )
    ray.add_argument("--ray-actors", type=int, default=1, help="embedders (actors)")
    ray.add_argument("--ray-cpus-per-actor", type=float, default=1.0)
    ray.add_argument("--ray-gpus-per-actor", type=float, default=0.0, help="e.g. 1")
    ray.add_argument(
        "--ray-resources",
        type=json.loads,
        default=None,
        metavar="JSON",
        help="custom resources per actor, e.g. '{\"TPU\": 4}' (one actor per TPU host)",
    )


def _ray_options(args: argparse.Namespace):
    from jaxembed.bulk.ray_job import RayOptions

    if args.ray_actors < 1:
        raise SystemExit("--ray-actors must be at least 1")
    return RayOptions(
        address=args.ray or None,
        actors=args.ray_actors,
        cpus_per_actor=args.ray_cpus_per_actor,
        gpus_per_actor=args.ray_gpus_per_actor,
        resources=args.ray_resources,
        compile_cache=args.compile_cache,
    )


def run(args: argparse.Namespace) -> int:
    from jaxembed.bulk.job import BulkOptions, embed_dataset, load_embedder
    from jaxembed.bulk.sinks import parse_sink

    options = BulkOptions(
        model=args.model,
        text_column=args.text_column,
        id_column=args.id_column,
        image_column=args.image_column,
        media_root=args.media_root,
        allow_private_media=args.allow_private_media,
        input_format=args.input_format,
        shard_rows=args.shard_rows,
        batch_rows=args.batch_rows,
        dimensions=args.dimensions,
        prompt_name=args.prompt,
        instruction=args.instruction,
        truncate=args.truncate,
        chunking=args.chunking,
        precision=args.precision,
        task=args.task,
        adapter=args.adapter,
        dtype=args.dtype,
    )
    sinks = [parse_sink(spec) for spec in args.sink]
    if args.ray is not None:
        from jaxembed.bulk.ray_job import embed_dataset_on_ray

        summary = embed_dataset_on_ray(
            args.inputs, args.output, options, _ray_options(args), sinks=sinks,
            progress=not args.quiet,
        )  # fmt: skip
        print(summary.line(), flush=True)
        return 0
    embedder = load_embedder(options, args.compile_cache)
    try:
        summary = embed_dataset(
            args.inputs,
            args.output,
            options,
            embedder=embedder,
            sinks=sinks,
            progress=not args.quiet,
        )
    finally:
        embedder.close()
    print(summary.line(), flush=True)
    return 0
