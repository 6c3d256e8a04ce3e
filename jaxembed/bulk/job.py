"""`embed_dataset`: a corpus → Parquet shards (and optionally a vector database), resumable.

    from jaxembed.bulk import BulkOptions, embed_dataset
    summary = embed_dataset(["corpus.jsonl"], "out/", BulkOptions(dimensions=256))

Shard by shard (jaxembed/bulk/sources.py): a shard's rows are checked (null, not a string,
empty → the errors file), sorted by length so that batches waste little padding, embedded
through the same `EmbeddingService` as the server (so vectors equal the server's for the same
text and options; two batches in flight keep tokenising beside the device), put back in
input order, written and committed (jaxembed/bulk/output.py). The next shard is read while
this one is embedded: memory holds about two shards whatever the input's size.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import hashlib
import json
import re
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxembed.bulk.output import Manifest, write_shard
from jaxembed.bulk.sinks import Sink
from jaxembed.bulk.sources import (
    Columns,
    Shard,
    Unreadable,
    count_rows,
    detect_format,
    input_fingerprint,
    iter_shards,
)
from jaxembed.engine.request.jobs import AdapterRef, EmbedItem, EmbedJob, EmbedOptions
from jaxembed.errors import InvalidInputError, MediaError


@dataclasses.dataclass(frozen=True)
class BulkOptions:
    """A corpus job: where the text is, how rows are cut into shards, and every embedding
    option that makes sense offline (as `Embedder.embed` takes them)."""

    model: str | None = None  # directory or card name; None: the embedded default
    text_column: str = "text"
    id_column: str | None = None  # None: the row number
    # Image models: embed this column's images (paths, URLs, data URIs) instead of text,
    # fetched under the server's media rules: local files only inside `media_root`, URLs only
    # to public hosts unless `allow_private_media`.
    image_column: str | None = None
    media_root: str | None = None
    allow_private_media: bool = False
    input_format: str | None = None  # None: from each input's suffix
    shard_rows: int = 50_000
    batch_rows: int = 1024  # texts per engine call (two in flight)
    dimensions: int | None = None
    prompt_name: str | None = None  # an input type or prompt of the card (query, document)
    instruction: str | None = None
    truncate: bool = False
    chunking: bool = False
    precision: str = "float32"
    task: str | None = None
    adapter: str | None = None  # a LoRA adapter directory
    dtype: str | None = None

    def embed_options(self) -> EmbedOptions:
        return EmbedOptions(
            truncate=self.truncate,
            prompt_name=self.prompt_name,
            instruction=self.instruction,
            dimensions=self.dimensions,
            adapter=AdapterRef(Path(self.adapter).name, self.adapter) if self.adapter else None,
            task=self.task,
            chunking=self.chunking,
            precision=self.precision,
            priority=10,  # behind interactive work when an embedder is shared
        )

    def identity(self) -> dict[str, Any]:
        """What must match for a rerun to resume (not the engine's batch size)."""
        out = dataclasses.asdict(self)
        del out["batch_rows"]
        for name in ("image_column", "media_root", "allow_private_media"):
            if not out[name]:  # jobs without images: as before images were possible
                del out[name]
        return out

    def columns(self) -> Columns:
        """The column read as each row's input (the image column, for images) and the id."""
        return Columns(self.image_column or self.text_column, self.id_column)

    def media_loader(self):
        """The fetcher of an image column's references (None for a text job)."""
        if self.image_column is None:
            return None
        from jaxembed.media_loader import MediaLoader, MediaPolicy

        root = Path(self.media_root).expanduser().resolve() if self.media_root else None
        return MediaLoader(MediaPolicy(allow_private=self.allow_private_media, root=root))


@dataclasses.dataclass(frozen=True)
class Summary:
    rows: int  # written (every run so far)
    error_rows: int
    shards: int
    shards_skipped: int  # finished by an earlier run
    tokens: int  # embedded in this run
    seconds: float
    output: Path
    rows_this_run: int = 0  # rows of the shards this run embedded

    def line(self) -> str:
        rate = self.rows_this_run / self.seconds if self.seconds else 0.0
        return (
            f"{self.rows:,} rows in {self.shards} shards ({self.shards_skipped} already done), "
            f"{self.error_rows:,} bad rows (see {self.output}/_errors/), {self.tokens:,} tokens "
            f"in {self.seconds:.1f} s ({rate:,.0f} rows/s this run) → {self.output}"
        )


def card_hash(card) -> str:
    return hashlib.sha256(json.dumps(card.to_json(), sort_keys=True).encode()).hexdigest()


def text_problem(text: Any, what: str = "text") -> str | None:
    """Why a row's text (or image reference: `what`) cannot be embedded, or None."""
    if isinstance(text, Unreadable):
        return text.reason
    if text is None:
        return f"null {what}"
    if not isinstance(text, str):
        return f"not a string ({type(text).__name__})"
    if not text.strip():
        return "empty or only whitespace"
    return None


def _checked(shard: Shard, what: str) -> tuple[list, list[str], list[int], list[dict]]:
    """(ids, texts, their rows in the shard, error records) of one shard."""
    ids, texts, positions, errors = [], [], [], []
    for position, (row, row_id, text) in enumerate(shard.rows()):
        reason = text_problem(text, what)
        if reason is not None:
            errors.append({"row": row, "id": row_id, "reason": reason})
            continue
        ids.append(row_id)
        texts.append(text)
        positions.append(position)
    return ids, texts, positions, errors


class ShardEmbedder:
    """One shard's inputs → (vectors, token counts) through an embedder's service; an input
    the service refuses (too long without truncate/chunking, an image that does not decode)
    or whose image cannot be fetched is taken out and reported."""

    def __init__(self, embedder, options: EmbedOptions, batch_rows: int, media=None):
        self.embedder = embedder
        self.options = options
        self.batch_rows = batch_rows
        self.media = media  # a MediaLoader: the inputs are image references
        self.pool = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="bulk-embed")

    @classmethod
    def for_job(cls, embedder, options: BulkOptions) -> ShardEmbedder:
        """The embedder of a job with `options` (its embedding options, batch size, media)."""
        return cls(embedder, options.embed_options(), options.batch_rows, options.media_loader())

    @property
    def kind(self) -> str:
        """What a row's input is: "text", or "image" (a reference to fetch)."""
        return "text" if self.media is None else "image"

    def close(self) -> None:
        self.pool.shutdown(wait=True)

    def empty(self) -> np.ndarray:
        """No vectors, in the shape and dtype this job's vectors have (a shard of bad rows)."""
        o = self.options
        width = o.dimensions or self.embedder.card.dimensions
        if o.precision in ("binary", "ubinary"):
            width = (width + 7) // 8
        dtype = {"float32": np.float32, "int8": np.int8, "binary": np.int8}.get(
            o.precision, np.uint8
        )
        return np.zeros((0, width), dtype)

    def _inputs(self, texts: list[str]) -> tuple[list, dict[int, str]]:
        """What the engine embeds for `texts`: the texts, or the images they reference
        (fetched concurrently; a reference that cannot be read is that row's reason)."""
        if self.media is None:
            return texts, {}
        data = asyncio.run(_fetch_all(self.media, texts))
        failed = {i: str(d) for i, d in enumerate(data) if isinstance(d, MediaError)}
        return [None if i in failed else EmbedItem(image=d) for i, d in enumerate(data)], failed

    def _embed(self, texts: list[str]) -> tuple[np.ndarray, list[int], dict[int, str]]:
        """Vectors and token counts of `texts` (bad ones: zero rows, and their reasons)."""
        inputs, refused = self._inputs(texts)
        keep = [i for i in range(len(texts)) if i not in refused]
        while keep:
            job = EmbedJob([inputs[i] for i in keep], self.options)
            try:
                result = self.embedder.call_service(lambda s, job=job: s.embed(job))
            except InvalidInputError as e:  # InputTooLongError, MediaError among them
                if e.index is None:  # about the job, not one input: the job stops
                    raise
                refused[keep.pop(e.index)] = _INPUT_PREFIX.sub("", str(e))
                continue
            vectors = result.vectors
            counts = result.token_counts or [0] * len(keep)
            full = np.zeros((len(texts), vectors.shape[1]), vectors.dtype)
            tokens = [0] * len(texts)
            full[keep] = vectors
            for i, count in zip(keep, counts, strict=True):
                tokens[i] = count
            return full, tokens, refused
        return np.zeros((0, 0), np.float32), [], refused

    def embed(self, texts: list[str]) -> tuple[np.ndarray | None, list[int], dict[int, str]]:
        """Every text of a shard, longest-similar ones batched together (sorted by length),
        results in the texts' order."""
        order = np.argsort(np.fromiter(map(len, texts), np.int64, len(texts)), kind="stable")
        chunks = [order[i : i + self.batch_rows] for i in range(0, len(order), self.batch_rows)]
        futures = [self.pool.submit(self._embed, [texts[i] for i in c]) for c in chunks]
        vectors, tokens, refused = None, [0] * len(texts), {}
        for chunk, future in zip(chunks, futures, strict=True):
            part, counts, bad = future.result()
            if part.shape[0]:
                if vectors is None:
                    vectors = np.zeros((len(texts), part.shape[1]), part.dtype)
                vectors[chunk] = part
            for i, count in zip(chunk, counts, strict=False):
                tokens[i] = count
            refused.update({int(chunk[i]): reason for i, reason in bad.items()})
        return vectors, tokens, refused


# "input[3] " / "input[3].image: ": the engine's name for an input of its job, not the row's.
_INPUT_PREFIX = re.compile(r"^input\[\d+\](\.\w+)?:? ?")


async def _fetch_all(loader, refs: list[str], concurrency: int = 16) -> list:
    """Each reference's bytes, or the MediaError that says why not."""
    gate = asyncio.Semaphore(concurrency)

    async def one(ref: str):
        async with gate:
            try:
                return await loader.read(ref)
            except MediaError as e:
                return e

    return await asyncio.gather(*(one(ref) for ref in refs))


def _prefetched(shards: Iterator[Shard]) -> Iterator[Shard]:
    """The next shard read (files, lines split) while the current one is embedded."""
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="bulk-read") as reader:
        pending = reader.submit(next, shards, None)
        while (shard := pending.result()) is not None:
            pending = reader.submit(next, shards, None)
            yield shard


def resolve_inputs(inputs: Sequence[str | Path], fmt: str | None) -> list[tuple[Path, str]]:
    paths = [Path(p).expanduser() for p in inputs]
    return [(p, fmt or detect_format(p)) for p in paths]


def job_identity(inputs, options: BulkOptions, card) -> dict[str, Any]:
    return {
        "model": card.name,
        "card_sha256": card_hash(card),
        "options": options.identity(),
        "inputs": [input_fingerprint(p) | {"format": f} for p, f in inputs],
    }


def embed_dataset(
    inputs: Sequence[str | Path],
    output: str | Path,
    options: BulkOptions = BulkOptions(),
    *,
    embedder=None,
    sinks: Sequence[Sink] = (),
    progress: bool = True,
) -> Summary:
    """Embed every row of `inputs` into `output` (see the module docstring); a rerun with the
    same inputs and options resumes. `embedder`: an `Embedder` already loaded (else
    `options.model` is loaded on every local device, the batch split over them)."""
    from jaxembed.bulk.progress import Progress

    start = time.perf_counter()
    resolved = resolve_inputs(inputs, options.input_format)
    own = embedder is None
    if own:
        embedder = load_embedder(options)
    out_dir = Path(output).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = Manifest.open(out_dir, job_identity(resolved, options, embedder.card))
    for sink in sinks:
        sink.open(embedder.card, options)
    totals = [count_rows(p, f) for p, f in resolved]
    bar = Progress(None if None in totals else sum(totals), enabled=progress)
    worker = ShardEmbedder.for_job(embedder, options)
    columns = options.columns()
    shards = skipped = tokens = this_run = 0
    try:
        for shard in _prefetched(iter_shards(resolved, columns, options.shard_rows)):
            shards += 1
            if manifest.done(shard.index):
                skipped += 1
                bar.skip(len(shard))
                continue
            used = _run_shard(shard, worker, out_dir, manifest, sinks)
            tokens += used
            this_run += len(shard)
            bar.advance(len(shard), used)
    finally:
        worker.close()
        bar.close()
        if own:
            embedder.close()
    return finish_job(manifest, sinks, out_dir, start, shards, skipped, tokens, this_run)


def finish_job(manifest, sinks, out_dir, start, shards, skipped, tokens, this_run) -> Summary:
    """Close the sinks (an index is built there) and sum up the job, every run so far."""
    for sink in sinks:
        sink.finish()
    rows, error_rows = manifest.totals()
    seconds = time.perf_counter() - start
    return Summary(rows, error_rows, shards, skipped, tokens, seconds, out_dir, this_run)


@dataclasses.dataclass(frozen=True)
class ShardResult:
    """A shard's files written (not yet committed): the manifest record and what it holds."""

    record: dict[str, Any]
    ids: list
    vectors: np.ndarray
    tokens: list[int]


def process_shard(shard: Shard, worker: ShardEmbedder, out_dir: Path) -> ShardResult:
    """Check, embed and write one shard's part and errors files (atomically each); the
    manifest commit is the caller's, so that a job spread over processes commits in one."""
    ids, texts, positions, errors = _checked(shard, worker.kind)
    vectors, tokens, refused = worker.embed(texts) if texts else (None, [], {})
    if refused:
        keep = [i for i in range(len(texts)) if i not in refused]
        for i, reason in sorted(refused.items()):
            errors.append({"row": shard.first_row + positions[i], "id": ids[i], "reason": reason})
        ids = [ids[i] for i in keep]
        tokens = [tokens[i] for i in keep]
        vectors = vectors[keep] if vectors is not None else None
    if vectors is None:  # every row bad: no part file
        vectors = worker.empty()
    errors.sort(key=lambda e: e["row"])
    record = write_shard(out_dir, shard.index, ids, vectors, tokens, errors)
    return ShardResult(record, ids, vectors, tokens)


def _run_shard(shard, worker, out_dir, manifest, sinks) -> int:
    """Embed, write and commit one shard; the tokens it used."""
    result = process_shard(shard, worker, out_dir)
    for sink in sinks:
        sink.write(result.ids, result.vectors, result.tokens)
    manifest.commit(out_dir, shard.index, result.record)
    return int(sum(result.tokens))


def load_embedder(options: BulkOptions, compile_cache: str | bool | None = None):
    """`options.model` on every local device (the batch split over them), a Router model's
    route for `options.prompt_name`, `options.adapter` loaded."""
    from jaxembed.api import Embedder
    from jaxembed.parallel.mesh import MeshShape
    from jaxembed.routes import route_of

    embedder = Embedder.from_pretrained(
        options.model,
        dtype=options.dtype,
        mesh=MeshShape(),  # every local device, the batch split over them
        route=route_of(options.model, options.prompt_name),  # a Router model's
        compile_cache_dir=compile_cache,
    )
    if options.adapter:
        embedder.adapter_slot(Path(options.adapter).name, options.adapter)
    return embedder
