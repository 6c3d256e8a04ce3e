"""Conversion HF → Orbax → load, and a restart that compiles nothing thanks to the persistent cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np

from jaxembed.api import Embedder
from jaxembed.weights.convert import convert
from jaxembed.weights.loader import load_model
from tests.helpers import save_tiny_model


def test_cli_convert_round_trip_gives_identical_embeddings(tmp_path, minilm_dir, embedder):
    out = tmp_path / "minilm"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "jaxembed.cli",
            "convert",
            str(minilm_dir),
            str(out),
            "--card",
            "all-minilm-l6-v2",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "converted all-minilm-l6-v2" in proc.stdout
    assert "convert: 100%" in proc.stderr  # the progress bar ran to the end
    assert {"card.json", "config.json", "tokenizer.json", "params"} <= {
        p.name for p in out.iterdir()
    }

    restored = load_model(out)
    assert restored.source_format == "orbax"
    assert restored.card == embedder.card
    for a, b in zip(
        jax.tree.leaves(restored.params), jax.tree.leaves(embedder.model.params), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    texts = ["conversion must not change a single bit", "second text"]
    np.testing.assert_array_equal(Embedder(restored).embed(texts), embedder.embed(texts))


def test_bfloat16_conversion_stores_bfloat16(tmp_path):
    save_tiny_model("roberta", tmp_path / "src", seed=5)
    result = convert(tmp_path / "src", tmp_path / "out", dtype="bfloat16", show_progress=False)
    model = load_model(result.out_dir)
    assert model.card.dtype == "bfloat16"
    assert {x.dtype for x in jax.tree.leaves(model.params)} == {np.dtype("bfloat16")}
    # And a float32 load of the same checkpoint gives the HF-directory result up to bf16 rounding.
    ref = Embedder(load_model(tmp_path / "src")).embed(["hello there"])
    got = Embedder(model).embed(["hello there"])
    assert float((ref * got).sum()) >= 0.999


def test_converting_into_a_foreign_directory_is_refused(tmp_path, minilm_dir):
    from jaxembed.errors import ModelLoadError

    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "something.txt").write_text("not ours")
    try:
        convert(minilm_dir, tmp_path / "busy", show_progress=False)
    except ModelLoadError as e:
        assert "not a jaxembed checkpoint" in str(e)
    else:
        raise AssertionError("expected ModelLoadError")


_RESTART_SCRIPT = textwrap.dedent(
    """
    import collections, json, sys
    import jax.monitoring as monitoring
    counts = collections.Counter()
    monitoring.register_event_listener(lambda name, **kw: counts.update([name]))
    from jaxembed.api import Embedder
    e = Embedder.from_pretrained(sys.argv[2], compile_cache_dir=sys.argv[1], seq_lengths=(16, 64),
                                 batch_sizes=(1, 4), token_budget=256, warmup=True)
    e.embed(["a restart must compile nothing"])
    print(json.dumps({"buckets": len(e.grid.buckets()),
                      "misses": counts["/jax/compilation_cache/cache_misses"],
                      "hits": counts["/jax/compilation_cache/cache_hits"]}))
    """
)


def test_restart_with_compile_cache_compiles_nothing(tmp_path):
    save_tiny_model("bert", tmp_path / "model", seed=6)
    cache = tmp_path / "xla-cache"

    def run() -> dict:
        env = {k: v for k, v in os.environ.items() if k != "JAXEMBED_COMPILE_CACHE"}
        proc = subprocess.run(
            [sys.executable, "-c", _RESTART_SCRIPT, str(cache), str(tmp_path / "model")],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout.strip().splitlines()[-1])

    first = run()
    assert first["buckets"] == 4
    assert first["misses"] >= first["buckets"]  # cold: every bucket compiled
    second = run()
    assert second["misses"] == 0, second  # restart: zero compilations
    assert second["hits"] >= second["buckets"]


def test_incomplete_conversion_is_refused_and_can_be_redone(tmp_path):
    from jaxembed.errors import ModelLoadError

    save_tiny_model("bert", tmp_path / "src", seed=8)
    out = convert(tmp_path / "src", tmp_path / "out", show_progress=False).out_dir
    (out / "card.json").unlink()  # as if the conversion had died before finishing
    try:
        load_model(out)
    except ModelLoadError as e:
        assert "incomplete conversion" in str(e)
    else:
        raise AssertionError("expected ModelLoadError")
    convert(tmp_path / "src", out, show_progress=False)  # a retry into the same directory works
    assert load_model(out).source_format == "orbax"


def test_converted_leaves_are_one_orbax_item_each(tmp_path, minilm_dir):
    result = convert(minilm_dir, tmp_path / "out", show_progress=False)
    items = sorted(p.name for p in (result.out_dir / "params").iterdir())
    assert "embeddings.word.embedding" in items and "layers.attention.query.kernel" in items
    assert result.param_bytes == sum(
        np.asarray(x).nbytes for x in jax.tree.leaves(load_model(result.out_dir).params)
    )


def test_convert_writes_tokenizer_json_from_slow_tokenizer_files(tmp_path, minilm_dir, embedder):
    """A checkpoint with only slow tokenizer files (vocab.txt here) gets a tokenizer.json."""
    import shutil

    src = tmp_path / "slow"
    shutil.copytree(minilm_dir, src)
    (src / "tokenizer.json").unlink()
    result = convert(src, tmp_path / "out", show_progress=False)
    assert (result.out_dir / "tokenizer.json").is_file()
    converted = Embedder.from_pretrained(result.out_dir, compile_cache_dir=False)
    texts = ["Hello, World!", "tokenizers must agree exactly", "naïve café"]
    for ours, reference in zip(converted.tokenize(texts), embedder.tokenize(texts), strict=True):
        assert ours.tolist() == reference.tolist()
