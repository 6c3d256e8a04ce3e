"""`jaxembed embed-dataset` / `jaxembed.bulk`: a corpus from every input format into Parquet
shards equal to `Embedder.embed`, bad rows in the errors files (never dropped), a SIGKILLed
job rerun to exactly one row per input, another job's directory refused, and a LanceDB sink
that answers nearest-neighbour queries and upserts on a rerun."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from jaxembed.api import Embedder
from jaxembed.bulk import BulkOptions, embed_dataset
from jaxembed.bulk.output import MANIFEST, OutputError
from jaxembed.bulk.sinks import LanceDBSink
from tests.helpers import save_tiny_model
from tests.texts import distinct_passages

ROWS = 2_000
# Ten bad rows, each with the reason the errors file must give.
BAD = [
    ({"id": "b0", "text": None}, "null text"),
    ({"id": "b1", "text": ""}, "empty"),
    ({"id": "b2", "text": "   \n"}, "empty"),
    ({"id": "b3", "text": 42}, "not a string"),
    ({"id": "b4", "text": ["a", "list"]}, "not a string"),
    ({"id": "b5", "body": "no text field"}, "no 'text' field"),
    ({"id": "b6", "text": "word " * 400}, "more than this model's maximum"),
    ({"id": "b7", "text": {"nested": "object"}}, "not a string"),
    ({"id": "b8", "text": "tokens " * 300}, "more than this model's maximum"),
    ({"id": "b9", "text": False}, "not a string"),
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("bulk_model")
    save_tiny_model("bert", out, seed=9)
    return out


@pytest.fixture(scope="module")
def embedder(model_dir):
    e = Embedder.from_pretrained(model_dir, compile_cache_dir=False)
    yield e
    e.close()


@pytest.fixture(scope="module")
def texts(embedder):
    """ROWS passages within the tiny model's 64 tokens (longer ones are the bad rows here)."""
    pool = distinct_passages(4 * ROWS)
    lengths = [len(ids) for ids in embedder.tokenizer.raw_ids(pool)]
    fitting = [t for t, n in zip(pool, lengths, strict=True) if n <= embedder.card.max_length]
    assert len(fitting) >= ROWS
    return fitting[:ROWS]


@pytest.fixture(scope="module")
def reference(embedder, texts):
    return embedder.embed(texts)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, texts):
    """The texts as JSONL with ids `p<n>`, the ten bad rows spread among them."""
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    with path.open("w") as f:
        for i, text in enumerate(texts):
            f.write(json.dumps({"id": f"p{i}", "text": text}) + "\n")
            if i % 199 == 100 and i // 199 < len(BAD):
                f.write(json.dumps(BAD[i // 199][0]) + "\n")
        f.write("{this line is not JSON\n")
    return path


def _read(out_dir):
    import pyarrow.parquet as pq

    table = pq.read_table(out_dir)  # `_manifest.json` and `_errors/` are skipped by Arrow
    ids = table.column("id").to_pylist()
    vectors = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
    return ids, vectors, table


def _errors(out_dir) -> list[dict]:
    return [
        json.loads(line)
        for path in sorted((out_dir / "_errors").glob("*.jsonl"))
        for line in path.read_text().splitlines()
    ]


def _check_exact(out_dir, reference):
    ids, vectors, _ = _read(out_dir)
    assert len(ids) == len(set(ids)) == ROWS  # every row once
    order = [int(i[1:]) for i in ids]
    assert np.abs(vectors - reference[order]).max() <= 1e-6


def test_jsonl_with_bad_rows_equals_embed(embedder, corpus, reference, tmp_path):
    out = tmp_path / "out"
    summary = embed_dataset(
        [corpus], out, BulkOptions(id_column="id", shard_rows=700), embedder=embedder
    )
    _check_exact(out, reference)
    errors = _errors(out)
    assert summary.rows == ROWS and summary.error_rows == len(errors) == len(BAD) + 1
    by_id = {e["id"]: e["reason"] for e in errors}
    for row, reason in BAD:
        assert reason in by_id[row["id"]], (row, by_id[row["id"]])
    assert "not valid JSON" in errors[-1]["reason"] and errors[-1]["id"] == errors[-1]["row"]
    manifest = json.loads((out / MANIFEST).read_text())
    assert sorted(int(k) for k in manifest["shards"]) == [0, 1, 2]
    assert manifest["job"]["model"] == embedder.card.name
    # A rerun finds everything done; other options are another job.
    again = embed_dataset(
        [corpus], out, BulkOptions(id_column="id", shard_rows=700), embedder=embedder
    )
    assert again.shards_skipped == 3 and again.rows == ROWS
    with pytest.raises(OutputError, match="differ in: options"):
        embed_dataset(
            [corpus],
            out,
            BulkOptions(id_column="id", shard_rows=700, truncate=True),
            embedder=embedder,
        )


def test_every_input_format_gives_the_same_vectors(embedder, texts, reference, tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = 300
    ids = [f"p{i}" for i in range(n)]
    pq.write_table(
        pa.table({"id": ids, "text": texts[:n]}), tmp_path / "c.parquet", row_group_size=64
    )
    datasets.Dataset.from_dict({"id": ids, "text": texts[:n]}).save_to_disk(tmp_path / "hf")
    for sep, name in ((",", "c.csv"), ("\t", "c.tsv")):
        import csv

        with (tmp_path / name).open("w", newline="") as f:
            writer = csv.writer(f, delimiter=sep)
            writer.writerow(["id", "text"])
            writer.writerows(zip(ids, texts[:n], strict=True))
    plain = [t.replace("\n", " ") for t in texts[:n]]
    (tmp_path / "c.txt").write_text("".join(t + "\n" for t in plain))
    for source in ("c.parquet", "hf", "c.csv", "c.tsv"):
        out = tmp_path / f"out-{source}"
        embed_dataset(
            [tmp_path / source],
            out,
            BulkOptions(id_column="id", shard_rows=128),
            embedder=embedder,
            progress=False,
        )
        got_ids, vectors, _ = _read(out)
        assert got_ids == ids, source
        assert np.abs(vectors - reference[:n]).max() <= 1e-6, source
    out = tmp_path / "out-text"
    embed_dataset([tmp_path / "c.txt"], out, BulkOptions(), embedder=embedder, progress=False)
    got_ids, vectors, _ = _read(out)
    assert got_ids == list(range(n))  # the row number is the id
    np.testing.assert_allclose(vectors, embedder.embed(plain), atol=1e-6)


def test_precision_and_dimensions_columns(embedder, texts, tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts[:40]))
    out = tmp_path / "out"
    embed_dataset([path], out, BulkOptions(precision="ubinary", dimensions=16), embedder=embedder)
    _, vectors, table = _read(out)
    assert str(table.schema.field("embedding").type) == "fixed_size_list<element: uint8>[2]"
    want = embedder.embed(texts[:40], dimensions=16, precision="ubinary")
    np.testing.assert_array_equal(vectors, want)
    assert all(t > 0 for t in table.column("tokens").to_pylist())


def _cli(model_dir, corpus, out, *extra) -> list[str]:
    return [
        sys.executable, "-m", "jaxembed.cli", "embed-dataset", str(corpus), "--output", str(out),
        "--model", str(model_dir), "--id-column", "id", "--shard-rows", "100", "--quiet",
        *extra,
    ]  # fmt: skip


def test_sigkill_at_half_then_rerun_lands_every_row_once(model_dir, corpus, reference, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen(_cli(model_dir, corpus, out), stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            manifest = out / MANIFEST
            if manifest.is_file() and len(json.loads(manifest.read_text())["shards"]) >= 10:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the job finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    done = len(json.loads((out / MANIFEST).read_text())["shards"])
    assert 10 <= done < 21
    rerun = subprocess.run(_cli(model_dir, corpus, out), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"({done} already done)" in rerun.stdout or "already done" in rerun.stdout
    _check_exact(out, reference)
    assert len(_errors(out)) == len(BAD) + 1


def test_lancedb_sink_answers_neighbours_and_upserts(embedder, texts, tmp_path):
    import lancedb

    path = tmp_path / "c.jsonl"
    path.write_text(
        "".join(json.dumps({"id": f"p{i}", "text": t}) + "\n" for i, t in enumerate(texts[:500]))
    )
    db = tmp_path / "lance"
    for run in range(2):  # the second run (a new output directory) upserts the same ids
        embed_dataset(
            [path],
            tmp_path / f"out{run}",
            BulkOptions(id_column="id", shard_rows=200),
            embedder=embedder,
            sinks=[LanceDBSink(db)],
            progress=False,
        )
    table = lancedb.connect(str(db)).open_table("embeddings")
    assert table.count_rows() == 500
    for i in (3, 250, 499):
        probe = embedder.embed([texts[i]])[0]
        hit = table.search(probe).metric("cosine").limit(1).to_list()[0]
        assert hit["id"] == f"p{i}"


# -- Ray Data (a local Ray cluster of this machine's two CPUs, started once for these tests) --


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def test_ray_equals_one_process_and_resumes_its_job(
    ray_cluster, model_dir, embedder, corpus, reference, tmp_path
):
    import shutil

    from jaxembed.bulk import RayOptions, embed_dataset_on_ray

    options = BulkOptions(model=str(model_dir), id_column="id", shard_rows=250)
    one = tmp_path / "one"
    embed_dataset([corpus], one, options, embedder=embedder, progress=False)
    # The same job started on one host and resumed on Ray: two shards uncommitted.
    resumed = tmp_path / "resumed"
    shutil.copytree(one, resumed)
    manifest = json.loads((resumed / MANIFEST).read_text())
    for index in ("1", "6"):
        del manifest["shards"][index]
    (resumed / MANIFEST).write_text(json.dumps(manifest))
    summary = embed_dataset_on_ray([corpus], resumed, options, RayOptions(actors=2), progress=False)
    assert (summary.shards, summary.shards_skipped, summary.rows) == (9, 7, ROWS)
    assert summary.rows_this_run == 500
    for out in (one, resumed):
        _check_exact(out, reference)
        assert len(_errors(out)) == len(BAD) + 1
    assert (
        json.loads((resumed / MANIFEST).read_text())["job"]
        == json.loads((one / MANIFEST).read_text())["job"]
    )


def _ray_actor_processes():
    import psutil

    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or ())
        if cmdline.startswith("ray::") and "ShardWorker" in cmdline:
            found.append(proc)
    return found


def test_ray_actor_killed_mid_job_lands_every_row_once(
    ray_cluster, model_dir, corpus, reference, tmp_path
):
    out = tmp_path / "out"
    command = _cli(model_dir, corpus, out, "--ray", ray_cluster, "--ray-actors", "2")
    command[command.index("--shard-rows") + 1] = "25"  # 81 shards: time to kill one actor
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = None
    deadline = time.monotonic() + 300
    try:
        while killed is None and time.monotonic() < deadline and proc.poll() is None:
            manifest = out / MANIFEST
            started = manifest.is_file() and len(json.loads(manifest.read_text())["shards"]) >= 3
            actors = _ray_actor_processes() if started else []
            if actors:
                killed = actors[0].pid
                os.kill(killed, signal.SIGKILL)
            time.sleep(0.02)
        assert killed is not None, "the job finished before an actor could be killed"
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, stderr[-3000:]
    done = json.loads((out / MANIFEST).read_text())["shards"]
    assert len(done) == 81 and "(0 already done)" in stdout
    _check_exact(out, reference)
    assert len(_errors(out)) == len(BAD) + 1


def test_jaxembedder_in_a_users_pipeline(ray_cluster, model_dir, texts, reference):
    import ray

    from jaxembed.integrations.ray import JaxEmbedder

    rows = [{"n": i, "text": t} for i, t in enumerate(texts[:300])]
    rows += [{"n": -1, "text": None}, {"n": -2, "text": " "}, {"n": -3, "text": "word " * 400}]
    out = (
        ray.data.from_items(rows)
        .map_batches(
            JaxEmbedder,
            fn_constructor_kwargs={"model": str(model_dir)},
            compute=ray.data.ActorPoolStrategy(size=2),
            batch_size=64,
        )
        .take_all()
    )
    by_n = {row["n"]: row for row in out}
    assert len(by_n) == len(rows)
    got = np.stack([by_n[i]["embedding"] for i in range(300)])
    assert np.abs(got - reference[:300]).max() <= 1e-6
    assert all(by_n[i]["error"] is None and by_n[i]["tokens"] > 0 for i in range(300))
    for n, reason in ((-1, "null text"), (-2, "empty"), (-3, "more than this model's maximum")):
        assert reason in by_n[n]["error"] and np.isnan(by_n[n]["embedding"]).all()


def test_planned_shards_are_the_streamed_shards(tmp_path):
    """The shards Ray's actors read from their descriptions (byte offsets, row numbers) are
    those one host cuts while streaming: for every format, across inputs, at any size."""
    import csv

    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    from jaxembed.bulk.plan import ShardPlan, plan_shards, read_shard
    from jaxembed.bulk.sources import Columns, iter_shards

    texts = [f"row {i} " + "x" * (i % 23) + (' "q,uote"\nnext' if i % 17 == 0 else "") for i in range(523)]  # fmt: skip
    ids = [f"p{i}" for i in range(523)]
    with (tmp_path / "a.jsonl").open("w") as f:
        for i in range(200):
            f.write(json.dumps({"id": ids[i], "text": texts[i]}) + ("\n\n  \n" if i % 50 == 0 else "\n"))  # fmt: skip
    with (tmp_path / "b.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "text"])
        writer.writerows(zip(ids[200:300], texts[200:300], strict=True))
        f.write("\r\n")
    pq.write_table(
        pa.table({"id": ids[300:400], "text": texts[300:400]}), tmp_path / "c.parquet",
        row_group_size=7,
    )  # fmt: skip
    datasets.Dataset.from_dict({"id": ids[400:480], "text": texts[400:480]}).save_to_disk(
        tmp_path / "hf"
    )
    (tmp_path / "e.txt").write_text("".join(t.replace("\n", " ") + "\n" for t in texts[480:]))
    inputs = [
        (tmp_path / "a.jsonl", "jsonl"), (tmp_path / "b.csv", "csv"),
        (tmp_path / "c.parquet", "parquet"), (tmp_path / "hf", "hf"), (tmp_path / "e.txt", "text"),
    ]  # fmt: skip
    columns = Columns("text", "id")
    for shard_rows in (1, 7, 100, 523, 1000):
        streamed = [(s.index, s.first_row, list(s.rows())) for s in iter_shards(inputs, columns, shard_rows)]  # fmt: skip
        planned = [
            read_shard(ShardPlan.from_json(json.loads(json.dumps(p.to_json()))), columns)
            for p in plan_shards(inputs, shard_rows)
        ]
        assert [(s.index, s.first_row, list(s.rows())) for s in planned] == streamed
        assert sum(len(rows) for _, _, rows in streamed) == 523


def test_image_column_under_the_media_policy(tmp_path):
    """An image model's corpus: paths inside --media-root and URLs (loopback ones only when
    allowed) equal `embed_images`; a missing, undecodable, escaping or refused image is a bad
    row with its reason."""
    from tests.helpers import MediaHTTPServer, generated_image, image_bytes, save_tiny_clip

    save_tiny_clip(tmp_path / "clip", seed=3)
    clip = Embedder.from_pretrained(tmp_path / "clip", compile_cache_dir=False)
    images = [generated_image((30 + i, 40), "RGB", seed=i) for i in range(12)]
    media = tmp_path / "media"
    (media / "sub").mkdir(parents=True)
    for i, image in enumerate(images[:8]):
        (media / "sub" / f"{i}.png").write_bytes(image_bytes(image))
    (media / "bad.png").write_bytes(b"not an image")
    served = {f"{i}.png": image_bytes(images[i]) for i in range(8, 12)}
    with MediaHTTPServer(served) as http:
        rows = [{"id": f"i{i}", "image": f"sub/{i}.png"} for i in range(8)]
        rows += [{"id": f"i{i}", "image": f"{http.url}/files/{i}.png"} for i in range(8, 12)]
        bad = {
            "missing": ("sub/none.png", "no such file under the media root"),
            "undecodable": ("bad.png", "not a supported image"),
            "escaping": ("../clip/config.json", "outside the media root"),
            "null": (None, "null image"),
        }
        rows += [{"id": name, "image": ref} for name, (ref, _) in bad.items()]
        path = tmp_path / "images.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        options = BulkOptions(id_column="id", image_column="image", media_root=str(media))
        for allow in (False, True):
            out = tmp_path / f"out-{allow}"
            options = dataclasses.replace(options, allow_private_media=allow, shard_rows=5)
            embed_dataset([path], out, options, embedder=clip, progress=False)
            ids, vectors, _ = _read(out)
            reasons = {e["id"]: e["reason"] for e in _errors(out)}
            for name, (_, reason) in bad.items():
                assert reason in reasons[name], (name, reasons[name])
            kept = 12 if allow else 8
            assert ids == [f"i{i}" for i in range(kept)]
            assert np.abs(vectors - clip.embed_images(images[:kept])).max() <= 1e-6
            if not allow:
                assert all("--allow-private-media" in reasons[f"i{i}"] for i in range(8, 12))
    clip.close()


def test_a_new_embedders_first_calls_from_two_threads(model_dir, texts, reference):
    """A job's two batches in flight are the first calls of an embedder just loaded: both
    threads find one service (it was once seen built before its event loop was)."""
    import concurrent.futures

    fresh = Embedder.from_pretrained(model_dir, compile_cache_dir=False)
    try:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            got = list(pool.map(lambda i: fresh.embed(texts[i : i + 1])[0], range(8)))
        assert np.abs(np.stack(got) - reference[:8]).max() <= 1e-6
    finally:
        fresh.close()
