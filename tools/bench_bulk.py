"""`embed-dataset` against a bare `Embedder.embed` loop over the same texts, same run.

N distinct English passages as JSONL and as Parquet; the model is a random BERT of `--shape`
(`host`: 1 layer x 32 wide, so the device costs ~nothing and the job's own reading, checking,
sorting and writing show at their largest; `minilm`: all-MiniLM-L6-v2's shape) with MiniLM's
tokenizer. The bare loop embeds the texts (already in memory) in the job's batch size, one
call after another; the job reads the file, embeds, writes Parquet shards and commits them.
Every job's vectors are checked against the loop's (max abs difference, ids all present once).

    python -m tools.bench_bulk --out docs/results/bulk.json
    python -m tools.bench_bulk --ray --texts 60000 --out docs/results/bulk_ray.json

`--ray`: the same job from cold (model loaded, programs compiled, the job run) in one process
against `embed_dataset_on_ray` with two actors on a local Ray cluster started for it (Ray's
start and the actors' loading included), on the same cores; also each one's steady rate
(rows/s between the first and the last shard committed).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from tools.bench_embed import best_of, cpu_model, write_results
from tools.hostpath import english_passages, random_bert_dir


def corpus(n: int) -> list[str]:
    """`n` distinct passages: the stdlib ones (~13,800), then pairs of them joined."""
    base = english_passages(min(n, 13_000))
    m = len(base)
    extra = [f"{base[i % m]} {base[(7 * i + 1 + i // m) % m]}" for i in range(n - m)]
    return base + extra


def write_inputs(texts: list[str], where: Path) -> dict[str, Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    jsonl = where / "corpus.jsonl"
    jsonl.write_text(
        "".join(json.dumps({"id": f"p{i}", "text": t}) + "\n" for i, t in enumerate(texts))
    )
    parquet = where / "corpus.parquet"
    pq.write_table(pa.table({"id": [f"p{i}" for i in range(len(texts))], "text": texts}), parquet)
    return {"jsonl": jsonl, "parquet": parquet}


def bare_loop(embedder, texts: list[str], batch: int) -> np.ndarray:
    return np.concatenate(
        [embedder.embed(texts[i : i + batch], truncate=True) for i in range(0, len(texts), batch)]
    )


def check(out_dir: Path, reference: np.ndarray) -> float:
    import pyarrow.parquet as pq

    table = pq.read_table(out_dir)
    ids = table.column("id").to_pylist()
    assert len(ids) == len(set(ids)) == len(reference), "rows missing or repeated"
    order = [int(i[1:]) for i in ids]
    vectors = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
    return float(np.abs(vectors - reference[order]).max())


class CommitClock:
    """When a job's manifest first and last grew (polled): its steady rate, start-up aside."""

    def __init__(self, out_dir: Path):
        import threading

        self.manifest = out_dir / "_manifest.json"
        self.times: list[tuple[float, int]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _poll(self) -> None:
        seen = 0
        while not self.stop.wait(0.02):
            try:
                shards = json.loads(self.manifest.read_text())["shards"]
            except (OSError, ValueError, KeyError):
                continue
            if len(shards) > seen:
                seen = len(shards)
                self.times.append((time.perf_counter(), sum(s["rows"] for s in shards.values())))

    def steady_rate(self) -> float:
        self.stop.set()
        self.thread.join()
        (t0, rows0), (t1, rows1) = self.times[0], self.times[-1]
        return (rows1 - rows0) / (t1 - t0) if t1 > t0 else float("nan")


def ray_against_one_process(texts, model: Path, inputs, tmp: Path, reference) -> dict:
    from jaxembed.bulk import BulkOptions, RayOptions, embed_dataset, embed_dataset_on_ray
    from jaxembed.bulk.job import load_embedder

    options = BulkOptions(model=str(model), id_column="id", truncate=True, shard_rows=2_500)
    out: dict = {}
    one = tmp / "one"
    clock = CommitClock(one)
    start = time.perf_counter()
    embedder = load_embedder(options, compile_cache=False)
    embed_dataset([inputs["parquet"]], one, options, embedder=embedder, progress=False)
    embedder.close()
    out["one_process_seconds"] = round(time.perf_counter() - start, 2)
    out["one_process_steady_rows_per_s"] = round(clock.steady_rate(), 1)
    spread = tmp / "ray"
    clock = CommitClock(spread)
    start = time.perf_counter()
    embed_dataset_on_ray(
        [inputs["parquet"]], spread, options,
        RayOptions(actors=2, compile_cache=str(tmp / "ray-compile-cache")), progress=False,
    )  # fmt: skip
    out["ray_2_actors_seconds"] = round(time.perf_counter() - start, 2)
    out["ray_2_actors_steady_rows_per_s"] = round(clock.steady_rate(), 1)
    out["ray_over_one_process"] = round(out["one_process_seconds"] / out["ray_2_actors_seconds"], 3)
    out["ray_over_one_process_steady"] = round(
        out["ray_2_actors_steady_rows_per_s"] / out["one_process_steady_rows_per_s"], 3
    )
    out["ray_max_abs_diff"] = check(spread, reference)
    out["one_process_max_abs_diff"] = check(one, reference)
    return out


def main() -> None:
    from jaxembed.api import Embedder
    from jaxembed.bulk import BulkOptions, embed_dataset

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--texts", type=int, default=20_000)
    p.add_argument("--shape", default="host", choices=["host", "minilm"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="docs/results/bulk.json")
    p.add_argument("--ray", action="store_true", help="Ray (2 actors) against one process")
    args = p.parse_args()
    texts = corpus(args.texts)
    options = BulkOptions(id_column="id", truncate=True, shard_rows=10_000)
    results: dict = {"date": time.strftime("%Y-%m-%d"), "cpu": cpu_model(), "texts": len(texts)}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = random_bert_dir(tmp / "model", args.shape)
        inputs = write_inputs(texts, tmp)
        embedder = Embedder.from_pretrained(model, compile_cache_dir=False)
        if args.ray:
            reference = bare_loop(embedder, texts, options.batch_rows)
            embedder.close()
            results |= {"shape": args.shape, **ray_against_one_process(texts, model, inputs, tmp, reference)}  # fmt: skip
            print(json.dumps(results, indent=2))
            write_results(args.out, results)
            return
        try:
            reference = bare_loop(embedder, texts, options.batch_rows)  # compiles
            loop = best_of(lambda: bare_loop(embedder, texts, options.batch_rows), args.repeats)
            # One untimed job first: sorted-by-length batches use bucket shapes the loop's
            # batches did not, and each compiles on first use.
            embed_dataset(
                [inputs["parquet"]], tmp / "warm", options, embedder=embedder, progress=False
            )
            results["shape"] = args.shape
            results["bare_loop_texts_per_s"] = round(len(texts) / loop, 1)
            for fmt, path in inputs.items():
                runs = iter(range(args.repeats))

                def job(fmt=fmt, path=path, runs=runs):
                    out = tmp / f"out-{fmt}-{next(runs)}"
                    embed_dataset([path], out, options, embedder=embedder, progress=False)

                seconds = best_of(job, args.repeats)
                results[f"{fmt}_texts_per_s"] = round(len(texts) / seconds, 1)
                results[f"{fmt}_over_loop"] = round(loop / seconds, 3)
                results[f"{fmt}_max_abs_diff"] = check(tmp / f"out-{fmt}-0", reference)
        finally:
            embedder.close()
    print(json.dumps(results, indent=2))
    write_results(args.out, results)


if __name__ == "__main__":
    main()
