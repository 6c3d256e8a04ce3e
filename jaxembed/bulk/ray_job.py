"""`embed_dataset_on_ray`: the corpus job of jaxembed/bulk/job.py as a Ray Data pipeline.

    from jaxembed.bulk import BulkOptions, RayOptions, embed_dataset_on_ray
    embed_dataset_on_ray(["corpus.parquet"], "/shared/out", BulkOptions(), RayOptions(actors=8))

The same shards, manifest and resume rules as one host, so a job can start on one host and
be resumed on a cluster (or the other way round):

* the driver plans the shards (jaxembed/bulk/plan.py: one pass over the inputs, no row
  parsed) and opens the manifest, which refuses another job's directory and removes the files
  of shards no run committed;
* a Ray Dataset holds one row per unfinished shard; `map_batches` runs `ShardWorker` actors
  (one embedder each, `concurrency` = actors, CPUs / GPUs / TPU resources per actor), each
  reading its shard from the inputs, embedding it and writing its part and errors files under
  their final names (atomically, so a shard redone after an actor died overwrites whole
  files);
* the driver commits each shard in the manifest as its result arrives (and writes it to the
  sinks): a shard counts once, whichever actor ran it and however often.

Ray Data restarts a dead actor and retries its shard (`max_restarts`, `max_task_retries`),
so an actor lost mid-job costs a shard's work, not the job. The inputs and the output
directory must be paths every node sees (a shared filesystem).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxembed.bulk.job import (
    BulkOptions,
    ShardEmbedder,
    Summary,
    finish_job,
    job_identity,
    load_embedder,
    process_shard,
    resolve_inputs,
)
from jaxembed.bulk.output import Manifest
from jaxembed.bulk.plan import ShardPlan, plan_shards, read_shard
from jaxembed.bulk.sinks import Sink


@dataclasses.dataclass(frozen=True)
class RayOptions:
    """Where the job runs and what each actor holds."""

    address: str | None = None  # None: $RAY_ADDRESS, else a local cluster on this machine
    actors: int = 1  # embedders; each takes whole shards
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0  # e.g. 1: one GPU per actor (a GPU node: actors = its GPUs)
    resources: dict[str, float] | None = None  # e.g. {"TPU": 4}: one actor per TPU host
    compile_cache: str | None = None  # a directory the actors share for compiled programs

    def remote_args(self) -> dict[str, Any]:
        out: dict[str, Any] = {"num_cpus": self.cpus_per_actor}
        if self.gpus_per_actor:
            out["num_gpus"] = self.gpus_per_actor
        if self.resources:
            out["resources"] = dict(self.resources)
        return out


class ShardWorker:
    """A Ray Data actor: one embedder, whole shards in (a row per shard: its plan as JSON),
    one manifest record per shard out."""

    def __init__(self, options: dict[str, Any], output: str, compile_cache: str | None = None):
        bulk = BulkOptions(**options)
        self.embedder = load_embedder(bulk, compile_cache)
        self.worker = ShardEmbedder.for_job(self.embedder, bulk)
        self.columns = bulk.columns()
        self.out_dir = Path(output)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        out: dict[str, list] = {"index": [], "record": [], "tokens": []}
        for plan_json in batch["plan"]:
            plan = ShardPlan.from_json(json.loads(plan_json))
            result = process_shard(read_shard(plan, self.columns), self.worker, self.out_dir)
            out["index"].append(plan.index)
            out["record"].append(json.dumps(result.record))
            out["tokens"].append(int(sum(result.tokens)))
        return out


def _card(options: BulkOptions):
    """The card the actors will load (for the job's identity), without loading weights."""
    from jaxembed.registry import resolve_model_config
    from jaxembed.routes import route_of

    return resolve_model_config(options.model, route_of(options.model, options.prompt_name))[1]


def _sink_part(sinks: Sequence[Sink], out_dir: Path, record: dict[str, Any]) -> None:
    """A committed-to-be shard's rows into the sinks (read back from its part file: the
    vectors stay on the actors' side of the cluster until written)."""
    if not sinks or record["file"] is None:
        return
    import pyarrow.parquet as pq

    table = pq.read_table(out_dir / record["file"])
    vectors = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
    ids, tokens = table.column("id").to_pylist(), table.column("tokens").to_pylist()
    for sink in sinks:
        sink.write(ids, vectors, tokens)


def _connect(ray_options: RayOptions) -> bool:
    """Ray initialised (connected to `address`, or a local cluster); whether we started it."""
    import ray

    if ray.is_initialized():
        return False
    ray.init(address=ray_options.address, log_to_driver=False)
    return True


def _absolute(spec: str | None) -> str | None:
    """A local path as the actors must see it (their working directory is not ours)."""
    if spec is None or not Path(spec).expanduser().exists():
        return spec
    return str(Path(spec).expanduser().resolve())


def _results(pending: list[ShardPlan], options: BulkOptions, out_dir: Path, ray_options):
    """The pipeline: a row per pending shard → ShardWorker actors; rows as they finish."""
    import ray

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the job's own bar counts rows and tokens
    shards = ray.data.from_items(
        [{"plan": json.dumps(p.to_json())} for p in pending], override_num_blocks=len(pending)
    )
    embedded = shards.map_batches(
        ShardWorker,
        fn_constructor_kwargs={
            "options": dataclasses.asdict(options)
            | {
                "model": _absolute(options.model),
                "adapter": _absolute(options.adapter),
                "media_root": _absolute(options.media_root),
            },
            "output": str(out_dir),
            "compile_cache": ray_options.compile_cache,
        },
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=ray_options.actors),
        **ray_options.remote_args(),
    )
    return embedded.iter_rows()


def embed_dataset_on_ray(
    inputs: Sequence[str | Path],
    output: str | Path,
    options: BulkOptions = BulkOptions(),  # noqa: B008 (frozen: a shared default is safe)
    ray_options: RayOptions = RayOptions(),
    *,
    sinks: Sequence[Sink] = (),
    progress: bool = True,
) -> Summary:
    """`embed_dataset` with the shards embedded by Ray actors (see the module docstring)."""
    from jaxembed.bulk.progress import Progress

    start = time.perf_counter()
    resolved = [(p.resolve(), f) for p, f in resolve_inputs(inputs, options.input_format)]
    card = _card(options)
    out_dir = Path(output).expanduser().resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = Manifest.open(out_dir, job_identity(resolved, options, card))
    plans = plan_shards(resolved, options.shard_rows)
    pending = [p for p in plans if not manifest.done(p.index)]
    rows_of = {p.index: p.rows for p in plans}
    for sink in sinks:
        sink.open(card, options)
    bar = Progress(sum(rows_of.values()), enabled=progress)
    bar.skip(sum(p.rows for p in plans if manifest.done(p.index)))
    tokens = this_run = 0
    started = _connect(ray_options) if pending else False
    try:
        for row in _results(pending, options, out_dir, ray_options) if pending else ():
            index, record = int(row["index"]), json.loads(row["record"])
            _sink_part(sinks, out_dir, record)
            manifest.commit(out_dir, index, record)
            tokens += int(row["tokens"])
            this_run += rows_of[index]
            bar.advance(rows_of[index], int(row["tokens"]))
    finally:
        bar.close()
        if started:
            import ray

            ray.shutdown()
    skipped = len(plans) - len(pending)
    return finish_job(manifest, sinks, out_dir, start, len(plans), skipped, tokens, this_run)
