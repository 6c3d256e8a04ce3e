"""`embed-dataset` against a bare `Embedder.embed` loop over the same texts, same run.

N distinct English passages as JSONL and as Parquet; the model is a random BERT of `--shape`
(`host`: 1 layer x 32 wide, so the device costs ~nothing and the job's own reading, checking,
sorting and writing show at their largest; `minilm`: all-MiniLM-L6-v2's shape) with MiniLM's
tokenizer. The bare loop embeds the texts (already in memory) in the job's batch size, one
call after another; the job reads the file, embeds, writes Parquet shards and commits them.
Every job's vectors are checked against the loop's (max abs difference, ids all present once).

    python -m tools.bench_bulk --out docs/results/bulk.json
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
    extra = [f"{base[i]} {base[(7 * i + 1) % len(base)]}" for i in range(n - len(base))]
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


def main() -> None:
    from jaxembed.api import Embedder
    from jaxembed.bulk import BulkOptions, embed_dataset

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--texts", type=int, default=20_000)
    p.add_argument("--shape", default="host", choices=["host", "minilm"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="docs/results/bulk.json")
    args = p.parse_args()
    texts = corpus(args.texts)
    options = BulkOptions(id_column="id", truncate=True, shard_rows=10_000)
    results: dict = {"date": time.strftime("%Y-%m-%d"), "cpu": cpu_model(), "texts": len(texts)}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = random_bert_dir(tmp / "model", args.shape)
        inputs = write_inputs(texts, tmp)
        embedder = Embedder.from_pretrained(model, compile_cache_dir=False)
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
