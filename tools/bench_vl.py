"""Vision-language item throughput: text+image items through jaxembed's engine vs each model's
published recipe run with transformers' modules (GME-Qwen2-VL's, Qwen3-VL-Embedding's), in
one process, the same items, rounds alternating between the two.

The models are tiny random Qwen2-VL and Qwen3-VL checkpoints (tests/helpers.py: vision towers
of width 32, 2- and 3-layer decoders of width 48) — no model hub here, so this measures the
engines' overheads (preprocessing, padding, dispatch, attention over long vision rows) at a
small arithmetic cost, not a 2B model's speed. Images are random RGB of 8 sizes between 60
and 300 px, each with a caption.

    python -m tools.bench_vl --items 32 --batch-size 8 --out docs/results/vl.json
"""

from __future__ import annotations

import argparse
import datetime
import tempfile
from pathlib import Path

import numpy as np

from tools.bench_embed import cpu_model, write_results
from tools.bench_rerank import timed

SIZES = [(60, 60), (120, 80), (200, 150), (300, 200), (90, 240), (150, 150), (250, 100), (64, 300)]


def workload(count: int):
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for i in range(count):
        width, height = SIZES[i % len(SIZES)]
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        out.append((f"a photo number {i} of something", Image.fromarray(pixels)))
    return out


def _gme(model, path, batch):
    from tests.helpers import gme_reference

    return gme_reference(model, path, [t for t, _ in batch], [i for _, i in batch])[0]


def _qwen3(model, path, batch):
    from tests.helpers import qwen3_vl_embedding_reference

    return qwen3_vl_embedding_reference(model, path, [{"text": t, "image": i} for t, i in batch])[0]


def measure(label: str, save, reference, batches, rounds: int, times: dict) -> float:
    """Rounds alternating between jaxembed and the model's recipe on transformers, after a
    warm-up round, into `times`; returns the smallest cosine between the two."""
    from jaxembed.api import Embedder
    from jaxembed.engine.request.jobs import EmbedItem

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tiny"
        model = save(path, seed=1)
        embedder = Embedder.from_pretrained(path, compile_cache_dir=False)

        def ours() -> np.ndarray:
            items = [[EmbedItem(text=t, image=i) for t, i in b] for b in batches]
            return np.concatenate([embedder.embed_items(b) for b in items])

        def theirs() -> np.ndarray:
            return np.concatenate([reference(model, path, b) for b in batches])

        ours(), theirs()  # warm-up: jaxembed compiles the shapes these batches use
        mine, ref = f"jaxembed ({label})", f"transformers ({label} recipe)"
        times[mine], times[ref] = [], []
        for _ in range(rounds):
            times[mine].append(timed(ours))
            times[ref].append(timed(theirs))
        cosine = float(np.min(np.sum(ours() * theirs(), axis=1)))
        embedder.close()
    return cosine


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default="tools/results/vl.json")
    args = p.parse_args()

    import torch
    import transformers

    import jaxembed
    from tests.helpers import save_tiny_qwen2_vl, save_tiny_qwen3_vl

    work = workload(args.items)
    batches = [work[i : i + args.batch_size] for i in range(0, len(work), args.batch_size)]
    setups = [
        ("GME-Qwen2-VL", save_tiny_qwen2_vl, _gme),
        ("Qwen3-VL-Embedding", save_tiny_qwen3_vl, _qwen3),
    ]
    times: dict[str, list[float]] = {}
    cosines = {
        label: measure(label, save, reference, batches, args.rounds, times)
        for label, save, reference in setups
    }
    results = {
        "date": datetime.date.today().isoformat(),
        "machine": cpu_model(),
        "versions": {
            "jaxembed": jaxembed.__version__,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
        },
        "models": "tiny random Qwen2-VL (vision 2x32, decoder 2x48) and Qwen3-VL (vision 3x32 "
        "with 2 deep-stack mergers, decoder 3x48)",
        "items": args.items,
        "batch_size": args.batch_size,
        "min_cosine": cosines,
        "engines": {},
    }
    for name, runs in times.items():
        best = min(runs)
        results["engines"][name] = {"items_per_s": args.items / best, "runs_s": runs}
        print(f"{name:42s} {args.items / best:8.1f} items/s")
    print(f"smallest cosine between the two: {cosines}")
    write_results(args.out, results)


if __name__ == "__main__":
    main()
