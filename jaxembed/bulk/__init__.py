"""Corpus jobs: a dataset → embeddings in Parquet shards (and a vector database), resumable
and exact. `jaxembed embed-dataset` on the command line; in Python:

    from jaxembed.bulk import BulkOptions, embed_dataset
    embed_dataset(["corpus.jsonl"], "out/", BulkOptions(truncate=True))
"""

from jaxembed.bulk.job import BulkOptions, Summary, embed_dataset
from jaxembed.bulk.sinks import LanceDBSink, Sink, parse_sink

__all__ = ["BulkOptions", "LanceDBSink", "Sink", "Summary", "embed_dataset", "parse_sink"]
