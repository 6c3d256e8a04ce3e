"""jaxembed in your own Ray Data pipeline: `JaxEmbedder`, a class for `Dataset.map_batches`.

    import ray
    from jaxembed.integrations.ray import JaxEmbedder

    ds = ray.data.read_parquet("s3://bucket/passages/")
    ds = ds.map_batches(
        JaxEmbedder,
        fn_constructor_kwargs={"model": "/models/bge-small", "prompt_name": "document"},
        compute=ray.data.ActorPoolStrategy(size=8),
        num_gpus=1,  # one accelerator per actor; TPU hosts: resources={"TPU": 4}
        batch_size=1024,
    )
    ds.write_parquet("s3://bucket/vectors/")

Each actor loads the model once (on every device it was given, the batch split over them)
and embeds each batch through the same service as the server and `jaxembed embed-dataset`,
so the vectors equal theirs. A row that cannot be embedded (null, empty, not a string, too
long without `truncate`/`chunking`) does not fail the pipeline: its `error` column says why,
and its vector is NaN (zeros for the integer precisions); other rows have `error` None.
For a whole corpus with resume and exactly-once output, `jaxembed embed-dataset --ray` runs
its own pipeline of these (jaxembed/bulk/ray_job.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxembed.bulk.job import BulkOptions, ShardEmbedder, load_embedder, text_problem


class JaxEmbedder:
    """Adds `embedding_column` (float32 [N, D], or the quantised bytes), `tokens` and
    `error_column` to each batch of `text_column` (or of `image_column`'s images). Keyword
    arguments: `BulkOptions`' embedding options (dimensions, prompt_name, instruction,
    truncate, chunking, precision, task, adapter, dtype, image_column, media_root,
    allow_private_media) and `compile_cache` (a directory the actors share)."""

    def __init__(
        self,
        model: str | None = None,
        *,
        text_column: str = "text",
        embedding_column: str = "embedding",
        error_column: str = "error",
        compile_cache: str | None = None,
        **options: Any,
    ):
        bulk = BulkOptions(model=model, text_column=text_column, **options)
        self.input_column = bulk.columns().text  # the image column, for images
        self.embedding_column = embedding_column
        self.error_column = error_column
        self.embedder = load_embedder(bulk, compile_cache)
        self.worker = ShardEmbedder.for_job(self.embedder, bulk)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = list(batch[self.input_column])
        errors: list[str | None] = [text_problem(t, self.worker.kind) for t in texts]
        good = [i for i, reason in enumerate(errors) if reason is None]
        vectors, tokens, refused = self.worker.embed([texts[i] for i in good])
        for i, reason in refused.items():
            errors[good[i]] = reason
        if vectors is None:  # no row embedded
            vectors, tokens = self.worker.empty(), []
        fill = np.nan if np.issubdtype(vectors.dtype, np.floating) else 0
        out_vectors = np.full((len(texts), vectors.shape[1]), fill, vectors.dtype)
        out_tokens = np.zeros(len(texts), np.int32)
        embedded = [i for i, j in enumerate(good) if errors[j] is None]  # refused ones: no
        out_vectors[[good[i] for i in embedded]] = vectors[embedded]
        out_tokens[[good[i] for i in embedded]] = [tokens[i] for i in embedded]
        return dict(batch) | {
            self.embedding_column: out_vectors,
            "tokens": out_tokens,
            self.error_column: np.array(errors, dtype=object),
        }
