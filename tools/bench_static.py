"""A static embedding model against all-MiniLM-L6-v2, in process, same texts, same run.

The static model has static-retrieval-mrl-en-v1's shape (a 30,522 x 1,024 table on
bert-base-uncased's WordPiece vocabulary: here all-MiniLM-L6-v2's tokenizer, random rows),
saved by the installed sentence-transformers. Each figure is the best of `--repeats`
passes of `Embedder.embed` over N different English passages; sentence-transformers'
own `encode` of the same static model (torch on the CPU) is the peer figure, and its vectors
are checked against jaxembed's.

    python -m tools.bench_static --out docs/results/static.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from tools.bench_embed import best_of, cpu_model, write_results
from tools.hostpath import english_passages, minilm_tokenizer_dir

VOCAB_WIDTH = 1024  # static-retrieval-mrl-en-v1's


def save_static_model(out: Path) -> Path:
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import StaticEmbedding
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(minilm_tokenizer_dir() / "tokenizer.json"))
    tokenizer.no_truncation()  # as bert-base-uncased's tokenizer.json: whole texts
    torch.manual_seed(0)
    table = torch.randn(tokenizer.get_vocab_size(), VOCAB_WIDTH) * 0.05
    SentenceTransformer(modules=[StaticEmbedding(tokenizer, embedding_weights=table)]).save(
        str(out)
    )
    return out


def jaxembed_rate(model: str | Path | None, texts: list[str], repeats: int):
    from jaxembed.api import Embedder

    start = time.perf_counter()
    embedder = Embedder.from_pretrained(model, compile_cache_dir=False)
    try:
        vectors = embedder.embed(texts, truncate=True)  # compiles what this workload uses
        first = time.perf_counter() - start
        rate = len(texts) / best_of(lambda: embedder.embed(texts, truncate=True), repeats)
    finally:
        embedder.close()
    return rate, first, vectors


def st_rate(model_dir: Path, texts: list[str], repeats: int):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_dir), device="cpu")
    vectors = model.encode(texts, batch_size=256)
    return len(texts) / best_of(lambda: model.encode(texts, batch_size=256), repeats), vectors


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--texts", type=int, default=10_000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="docs/results/static.json")
    args = p.parse_args()
    texts = english_passages(args.texts)
    with tempfile.TemporaryDirectory() as tmp:
        static_dir = save_static_model(Path(tmp) / "static-mrl-shaped")
        static, static_first, ours = jaxembed_rate(static_dir, texts, args.repeats)
        peer, theirs = st_rate(static_dir, texts, args.repeats)
    cos = np.sum(ours * theirs, 1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(theirs, axis=1)
    minilm, minilm_first, _ = jaxembed_rate(None, texts, args.repeats)
    results = {
        "date": time.strftime("%Y-%m-%d"),
        "cpu": cpu_model(),
        "texts": len(texts),
        "static_texts_per_s": round(static, 1),
        "static_first_pass_s": round(static_first, 2),
        "minilm_texts_per_s": round(minilm, 1),
        "minilm_first_pass_s": round(minilm_first, 2),
        "static_over_minilm": round(static / minilm, 2),
        "sentence_transformers_static_texts_per_s": round(peer, 1),
        "min_cosine_vs_sentence_transformers": float(cos.min()),
    }
    print(json.dumps(results, indent=2))
    write_results(args.out, results)


if __name__ == "__main__":
    main()
