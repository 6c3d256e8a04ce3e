"""Memory plans read from compiled bucket programs: `jaxembed plan`, and the serve-time grid fit."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from jaxembed.cli import main
from jaxembed.engine.batching.buckets import Bucket
from jaxembed.engine.device.plan_buckets import plan_bucket_memory
from jaxembed.errors import ModelLoadError
from jaxembed.families import get_family
from jaxembed.parallel.mesh import MeshShape
from jaxembed.registry import find_card, read_hf_config, registry_cards
from tests.helpers import MINILM_DIR

GIB = 2**30


def _qwen3_plan(attention: str, buckets: list[Bucket]):
    card = find_card("qwen3-embedding-0.6b")
    family = get_family(card.architecture["model_type"])
    config = family.config_from_hf(card.architecture)
    return plan_bucket_memory(family, config, card, "float32", MeshShape(1, 1), attention, buckets)


def test_blocked_attention_needs_a_tenth_of_xla_memory_at_8k():
    """Qwen3-Embedding-0.6B shapes, float32, one 1x8192 bucket, from abstract shapes only."""
    (xla,) = _qwen3_plan("xla", [Bucket(1, 8192)])
    blocked, longest = _qwen3_plan("blocked", [Bucket(1, 8192), Bucket(1, 32768)])
    assert (xla.attention, blocked.attention) == ("xla", "blocked")
    assert xla.argument_bytes == blocked.argument_bytes > 2.2 * GIB  # 596M float32 parameters
    assert xla.temp_bytes > 10 * GIB  # the [16, 8192, 8192] float32 scores, and their softmax
    assert blocked.temp_bytes <= 0.10 * xla.temp_bytes
    assert longest.bucket == Bucket(1, 32768) and longest.temp_bytes < 4 * GIB


def test_plan_cli_json(capsys):
    assert (
        main(
            [
                "plan",
                "qwen3-embedding-0.6b",
                "--dtype",
                "float32",
                "--attention",
                "auto",
                "--buckets",
                "1x512,1x2048",
                "--json",
            ]
        )
        == 0
    )
    plan = json.loads(capsys.readouterr().out)
    assert plan["parameters"] == 595_776_512
    rows = {b["bucket"]: b for b in plan["buckets"]}
    assert set(rows) == {"1x512", "1x2048"}
    for row in rows.values():
        assert {"bucket", "attention", "temp_bytes", "argument_bytes", "output_bytes"} <= set(row)
    assert rows["1x512"]["attention"] == "xla" and rows["1x2048"]["attention"] == "blocked"


@pytest.mark.parametrize("name", sorted(registry_cards()))
def test_every_shipped_card_plans_without_weights(name, capsys):
    card = registry_cards()[name]
    assert card.architecture, f"{name} ships no architecture"
    vision = ["--vision-buckets", "1x256"] if card.vl_template else []
    assert main(["plan", name, "--buckets", "1x64", *vision, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["buckets"]
    programs = ["vision", "decoder"] if card.vl_template else ["text"]
    assert [r["program"] for r in rows] == programs
    assert all(r["argument_bytes"] > 0 and r["temp_bytes"] > 0 for r in rows)


def test_card_architecture_is_the_real_config():
    real = read_hf_config(MINILM_DIR)
    shipped = find_card("all-minilm-l6-v2").architecture
    assert {k: real[k] for k in shipped} == shipped


def test_plan_on_a_mesh_forces_host_devices():
    """`--mesh data=2,model=4` on a CPU-only machine: the command presents 8 CPU devices."""
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "jaxembed.cli",
            "plan",
            "bge-base-en-v1.5",
            "--mesh",
            "data=2,model=4",
            "--buckets",
            "2x512",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    plan = json.loads(run.stdout)
    assert plan["mesh"] == {"data": 2, "model": 4}
    assert plan["buckets"][0]["bucket"] == "2x512"


def test_grid_shrinks_to_fit_and_refuses_what_cannot_fit(embedder):
    from jaxembed.api import Embedder

    fresh = Embedder(embedder.model, token_budget=512)
    largest = fresh.runner.memory(Bucket(fresh.grid.max_rows(256), 256))
    smallest = fresh.runner.memory(Bucket(1, 256))
    assert largest.bucket.batch == 2 and largest.total_bytes > smallest.total_bytes
    grid = fresh.fit_memory((largest.total_bytes + smallest.total_bytes) // 2)
    assert grid.max_rows(256) == 1 and grid.max_rows(16) == 32  # only the long bucket shrank
    assert fresh.runner.grid is grid and Bucket(2, 256) not in grid.buckets()
    with pytest.raises(ModelLoadError, match=r"bucket 1x256 needs .* GiB per device"):
        fresh.fit_memory(smallest.total_bytes - 1)


def test_serve_refuses_a_grid_that_cannot_fit():
    run = subprocess.run(
        [sys.executable, "-m", "jaxembed.cli", "serve", "--device-memory-gib", "0.01"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 2
    assert "cannot start: bucket" in run.stderr and "GiB per device" in run.stderr
