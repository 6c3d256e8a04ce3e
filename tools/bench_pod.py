"""Throughput through a two-process pod (`--distributed --multihost global`), A/B between
source trees in one run.

Each tree (a checkout; `jaxembed_server` found through `TREE/_pkgs`, made here) serves a
random BERT of `--shape` with MiniLM's tokenizer over a mesh data=2,model=4 spanning two local
processes of 4 CPU devices each; concurrent clients send distinct English passages to the
leader, `--batch` texts per request, for `--seconds`. Trees are measured in turns (A B A B),
best run each, so drift on a shared machine falls on both alike.

    git worktree add /tmp/socket-pod <commit before the change>
    python -m tools.bench_pod --tree socket=/tmp/socket-pod --tree jax=. --out docs/results/pod.json
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from tests.helpers import free_port
from tools.bench_embed import cpu_model, write_results
from tools.hostpath import english_passages, random_bert_dir

GRID = ["--seq-lengths", "16,32,64,128", "--token-budget", "2048"]


def _start_pod(tree: Path, model: Path, logs: Path) -> tuple[list[subprocess.Popen], str]:
    """Follower then leader from `tree`; the leader's URL once it is ready."""
    pkgs = tree / "_pkgs"
    pkgs.mkdir(exist_ok=True)
    if not (pkgs / "jaxembed_server").exists():
        (pkgs / "jaxembed_server").symlink_to(tree / "server")
    env = {
        **os.environ,
        "PYTHONPATH": f"{tree}:{pkgs}",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
    }
    common = [
        "--model", str(model), "--distributed", "--num-processes", "2",
        "--coordinator-address", f"127.0.0.1:{free_port()}", "--mesh", "data=2,model=4",
        "--compile-cache", str(logs / "xla"), *GRID,
    ]  # fmt: skip
    if "--control-address" in (tree / "server" / "config.py").read_text():  # the socket version
        common += ["--control-address", f"127.0.0.1:{free_port()}"]
    port = free_port()
    procs = []
    for pid in (1, 0):
        serve_port = port if pid == 0 else free_port()
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "jaxembed.cli", "serve", *common, "--process-id", str(pid),
                 "--host", "127.0.0.1", "--port", str(serve_port)],
                stdout=(logs / f"p{pid}.log").open("wb"), stderr=subprocess.STDOUT, env=env,
                cwd=tree,  # `-m` puts the working directory first on sys.path
            )
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            raise RuntimeError(f"a pod process exited: {(logs / 'p0.log').read_text()[-3000:]}")
        try:
            if httpx.get(url + "/ready", timeout=2).status_code == 200:
                return procs, url
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError("the pod was not ready in 600 s")


def _load(url: str, texts: list[str], batch: int, clients: int, seconds: float) -> float:
    """Texts/s with `clients` concurrent senders for `seconds`."""
    stop = time.monotonic() + seconds

    def sender(k: int) -> int:
        done, i = 0, k * 7919
        with httpx.Client(timeout=120) as client:
            while time.monotonic() < stop:
                chunk = [texts[(i + j) % len(texts)] for j in range(batch)]
                i += batch * clients
                r = client.post(url + "/v1/embeddings", json={"input": chunk, "truncate": True})
                if r.status_code != 200:
                    raise RuntimeError(f"HTTP {r.status_code}: {r.text[:500]}")
                done += batch
        return done

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        total = sum(pool.map(sender, range(clients)))
    return total / (time.perf_counter() - start)


def _stop(procs: list[subprocess.Popen]) -> None:
    import signal

    procs[1].send_signal(signal.SIGTERM)  # the leader drains and stops the follower
    for p in procs:
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tree", action="append", required=True, help="LABEL=PATH (repeatable)")
    p.add_argument("--shape", default="host", choices=["host", "minilm"])
    p.add_argument("--batch", type=int, default=16, help="texts per request")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", default="docs/results/pod.json")
    p.add_argument("--workdir", default=None, help="keep the model and the pods' logs here")
    args = p.parse_args()
    trees = {label: Path(path).resolve() for label, path in (t.split("=", 1) for t in args.tree)}
    texts = english_passages(8_000)
    results: dict = {
        "date": time.strftime("%Y-%m-%d"), "cpu": cpu_model(), "shape": args.shape,
        "batch": args.batch, "clients": args.clients, "seconds": args.seconds,
    }  # fmt: skip
    runs: dict[str, list[float]] = {label: [] for label in trees}
    with tempfile.TemporaryDirectory() as scratch:
        tmp = args.workdir or scratch
        model = random_bert_dir(Path(tmp) / "model", args.shape)
        for _ in range(args.rounds):
            for label, tree in trees.items():
                logs = Path(tmp) / label
                logs.mkdir(exist_ok=True)
                procs, url = _start_pod(tree, model, logs)
                try:
                    _load(url, texts, args.batch, args.clients, 3.0)  # warm every bucket used
                    runs[label].append(_load(url, texts, args.batch, args.clients, args.seconds))
                finally:
                    _stop(procs)
                print(f"{label}: {runs[label][-1]:,.0f} texts/s", flush=True)
    for label, rates in runs.items():
        results[f"{label}_texts_per_s"] = round(max(rates), 1)
        results[f"{label}_runs"] = [round(r, 1) for r in rates]
    labels = list(trees)
    if len(labels) == 2:
        a, b = labels
        results[f"{b}_over_{a}"] = round(max(runs[b]) / max(runs[a]), 3)
    print(json.dumps(results, indent=2))
    write_results(args.out, results)


if __name__ == "__main__":
    main()
