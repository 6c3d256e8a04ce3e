"""`jaxembed convert`: an HF / sentence-transformers directory → a jaxembed checkpoint directory.

The output holds `card.json`, `config.json`, the tokenizer files and `params/`
(Orbax). Tensors are converted one at a time into the target dtype, so peak
host memory stays near one copy of the converted weights.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from pathlib import Path

import jax.numpy as jnp
from tqdm.auto import tqdm

from jaxembed.card import CARD_FILENAME
from jaxembed.errors import ModelLoadError
from jaxembed.families import get_family
from jaxembed.registry import checkpoints_dir, find_card, read_hf_config, resolve_model
from jaxembed.weights.convert_params import tree_nbytes
from jaxembed.weights.loader import PARAMS_DIRNAME, TOKENIZER_FILES, read_safetensors_params
from jaxembed.weights.orbax_io import save_params


@dataclasses.dataclass(frozen=True)
class ConversionResult:
    out_dir: Path
    card_name: str
    param_bytes: int
    seconds: float


def convert(
    src: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    card_name: str | None = None,
    dtype: str | None = None,
    show_progress: bool = True,
) -> ConversionResult:
    start = time.perf_counter()
    src_dir = Path(src)
    if not src_dir.is_dir():
        raise ModelLoadError(f"{src} is not a directory")
    _, card = resolve_model(src_dir)
    if card_name is not None:
        registry_card = find_card(card_name)
        if registry_card is None:
            raise ModelLoadError(f"no card named {card_name!r} in the registry")
        card = registry_card
    if dtype:
        card = card.replace(dtype=dtype)

    out_dir = Path(out) if out is not None else checkpoints_dir() / card.name
    if out_dir.resolve() == src_dir.resolve():
        raise ModelLoadError("the output directory must differ from the source directory")
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / CARD_FILENAME).is_file():
        raise ModelLoadError(f"{out_dir} exists, is not empty and is not a jaxembed checkpoint")

    hf_config = read_hf_config(src_dir)
    family = get_family(str(hf_config.get("model_type")))
    config = family.config_from_hf(hf_config)
    with tqdm(
        total=len(family.rules(config)), desc="convert", unit="tensor", disable=not show_progress
    ) as bar:
        params = read_safetensors_params(
            src_dir, family, config, jnp.dtype(card.dtype), progress=lambda *_: bar.update(1)
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    if show_progress:
        print(f"writing Orbax checkpoint to {out_dir / PARAMS_DIRNAME}", flush=True)
    save_params(out_dir / PARAMS_DIRNAME, params)
    card.save(out_dir / CARD_FILENAME)
    shutil.copy2(src_dir / "config.json", out_dir / "config.json")
    for name in TOKENIZER_FILES:
        if (src_dir / name).is_file():
            shutil.copy2(src_dir / name, out_dir / name)
    return ConversionResult(out_dir, card.name, tree_nbytes(params), time.perf_counter() - start)
