"""Corpus jobs: a dataset → embeddings in Parquet shards (and a vector database), resumable
and exact. `jaxembed embed-dataset` on the command line; in Python:

    from jaxembed.bulk import BulkOptions, embed_dataset
    embed_dataset(["corpus.jsonl"], "out/", BulkOptions(truncate=True))
    embed_dataset_on_ray(["corpus.jsonl"], "/shared/out", BulkOptions(), RayOptions(actors=8))
"""

from jaxembed.bulk.job import BulkOptions, Summary, embed_dataset
from jaxembed.bulk.ray_job import RayOptions, embed_dataset_on_ray
from jaxembed.bulk.sinks import LanceDBSink, Sink, parse_sink

__all__ = [
    "BulkOptions",
    "LanceDBSink",
    "RayOptions",
    "Sink",
    "Summary",
    "embed_dataset",
    "embed_dataset_on_ray",
    "parse_sink",
]
