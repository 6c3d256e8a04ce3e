"""Peak host memory of `jaxembed convert` on a multi-GB decoder checkpoint (random weights).

Writes a sharded float32 Mistral-shaped checkpoint, converts it to bfloat16 in a
fresh process and reports the peak RSS growth next to the size of the
converted weights (the goal: about one copy of the weights in the target dtype).

    python -m tools.measure_convert_memory --hidden 2048 --layers 8
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np


def write_checkpoint(out: Path, hidden: int, layers: int, vocab: int, shard_bytes: int) -> dict:
    from safetensors.numpy import save_file

    from jaxembed.families import get_family
    from jaxembed.weights.convert_params import _expected_hf_shape

    config = {
        "model_type": "mistral",
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": hidden * 7 // 2,
        "num_hidden_layers": layers,
        "num_attention_heads": hidden // 128,
        "num_key_value_heads": max(1, hidden // 512),
        "head_dim": 128,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "max_position_embeddings": 4096,
        "sliding_window": None,
        "hidden_act": "silu",
        "eos_token_id": 2,
    }
    family = get_family("mistral")
    cfg = family.config_from_hf(config)
    abstract = family.abstract_params(cfg, np.float32)
    rng = np.random.default_rng(0)
    shard, shard_size, weight_map, n = {}, 0, {}, 0

    def flush():
        nonlocal shard, shard_size, n
        if shard:
            name = f"model-{n:05d}.safetensors"
            save_file(shard, str(out / name))
            weight_map.update(dict.fromkeys(shard, name))
            shard, shard_size, n = {}, 0, n + 1

    for rule in family.rules(cfg):
        leaf = abstract
        for part in rule.flax_path:
            leaf = leaf[part]
        leaf_shape = tuple(leaf.shape[1:]) if rule.per_layer else tuple(leaf.shape)
        for layer in range(layers) if rule.per_layer else [None]:
            key = rule.hf_key.format(layer=layer) if layer is not None else rule.hf_key
            shard[key] = rng.standard_normal(
                _expected_hf_shape(rule.layout, leaf_shape), dtype=np.float32
            )
            shard_size += shard[key].nbytes
            if shard_size >= shard_bytes:
                flush()
    flush()
    (out / "config.json").write_text(json.dumps(config))
    (out / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    from tests.helpers import MINILM_DIR

    (out / "tokenizer.json").write_bytes((MINILM_DIR / "tokenizer.json").read_bytes())
    return config


_CHILD = """
import json, resource, sys
from jaxembed.weights.convert import convert
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
r = convert(sys.argv[1], sys.argv[2], dtype="bfloat16", show_progress=False)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"baseline_mib": base / 1024, "peak_mib": peak / 1024, "converted_mib": r.param_bytes / 2**20,
                  "seconds": r.seconds}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--shard-mib", type=int, default=256)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "src", Path(tmp) / "out"
        src.mkdir()
        write_checkpoint(src, args.hidden, args.layers, args.vocab, args.shard_mib * 2**20)
        source_mib = sum(p.stat().st_size for p in src.glob("*.safetensors")) / 2**20
        proc = subprocess.run(
            [sys.executable, "-c", _CHILD, str(src), str(out)],
            capture_output=True,
            text=True,
            check=True,
        )
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        result["source_float32_mib"] = source_mib
        result["growth_mib"] = result["peak_mib"] - result["baseline_mib"]
        result["growth_over_converted"] = result["growth_mib"] / result["converted_mib"]
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
