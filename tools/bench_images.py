"""Image embedding throughput: jaxembed vs transformers' CLIPModel on the same weights.

No hub here, so the model is a randomly initialised CLIP at a real architecture's shapes
(default ViT-B/32 at 224: `transformers.CLIPConfig()`'s defaults), saved once as a HF
directory. Both sides embed the same decoded images (preprocessing included: jaxembed's
HF-exact preprocessor vs transformers' PIL image processor), and the results are compared
(min cosine) so that a fast wrong answer cannot pass.

    python -m tools.bench_images --images 256 --out tools/results/bench_images.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def build_model(directory: Path, image_size: int, patch_size: int) -> None:
    """A random CLIP at real shapes (transformers' defaults = ViT-B/32) with the test tokenizer."""
    import transformers
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    from tests.helpers import _build_and_save, _tiny_clip_tokenizer

    config = transformers.CLIPConfig(
        vision_config={"image_size": image_size, "patch_size": patch_size}
    )
    processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
    )
    # The text tower needs a tokenizer file to load; the benchmark embeds images only.
    _build_and_save(
        transformers.CLIPModel, config, _tiny_clip_tokenizer(), processor, directory, seed=0
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--patch-size", type=int, default=32)
    parser.add_argument("--torch-batch", type=int, default=32)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    import torch
    import transformers
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    from jaxembed.api import Embedder
    from tests.helpers import generated_image
    from tools.bench_embed import cpu_model, write_results

    rng = np.random.default_rng(0)
    images = [
        generated_image((int(rng.integers(200, 640)), int(rng.integers(200, 480))), seed=i)
        for i in range(args.images)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "clip"
        build_model(directory, args.image_size, args.patch_size)

        embedder = Embedder.from_pretrained(directory, compile_cache_dir=False)
        start = time.perf_counter()
        embedder.images.warmup()
        warmup = time.perf_counter() - start
        embedder.embed_images(images[:8])
        start = time.perf_counter()
        ours = embedder.embed_images(images)
        ours_seconds = time.perf_counter() - start

        model = transformers.CLIPModel.from_pretrained(directory).eval()
        processor = CLIPImageProcessorPil.from_pretrained(directory)
        torch.set_num_threads(os.cpu_count() or 1)
        parts = []
        start = time.perf_counter()
        with torch.inference_mode():
            for i in range(0, len(images), args.torch_batch):
                pixels = processor(images=images[i : i + args.torch_batch], return_tensors="pt")
                parts.append(model.get_image_features(**pixels).pooler_output.numpy())
        torch_seconds = time.perf_counter() - start
    theirs = np.concatenate(parts)
    theirs /= np.linalg.norm(theirs, axis=1, keepdims=True)
    cosine = (ours * theirs).sum(axis=1)
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "model": f"CLIP ViT (random weights), image {args.image_size}, patch {args.patch_size}",
        "images": args.images,
        "jaxembed_images_per_s": round(args.images / ours_seconds, 1),
        "jaxembed_warmup_s": round(warmup, 1),
        "jaxembed_batch_sizes": list(embedder.images.batch_sizes),
        "transformers_images_per_s": round(args.images / torch_seconds, 1),
        "transformers_batch": args.torch_batch,
        "speedup": round(torch_seconds / ours_seconds, 2),
        "min_cosine_vs_transformers": round(float(cosine.min()), 7),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        write_results(args.out, result)


if __name__ == "__main__":
    main()
