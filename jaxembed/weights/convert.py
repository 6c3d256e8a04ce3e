"""`jaxembed convert`: an HF / sentence-transformers directory → a jaxembed checkpoint directory.

The output holds `card.json`, `config.json`, the tokenizer files and `params/`
(Orbax, one item per leaf). Names and shapes are checked first; then one leaf
at a time is built in the target dtype, written and freed, so peak host
memory stays near the largest leaf rather than the whole model.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxembed.card import CARD_FILENAME
from jaxembed.errors import ModelLoadError
from jaxembed.families import model_family, module_dirs
from jaxembed.registry import checkpoints_dir, find_card, read_hf_config, resolve_model
from jaxembed.weights.convert_params import iter_leaves, plan_conversion
from jaxembed.weights.loader import COMPANION_FILES, PARAMS_DIRNAME
from jaxembed.weights.orbax_io import save_leaves
from jaxembed.weights.safetensors_io import SafetensorsCheckpoint


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
    # (A static model saved by sentence-transformers 3.x: its module folder holds the files.)
    src_dir, card = resolve_model(src_dir)
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
    ours = (out_dir / CARD_FILENAME).is_file() or (out_dir / PARAMS_DIRNAME).is_dir()
    if out_dir.exists() and any(out_dir.iterdir()) and not ours:
        raise ModelLoadError(f"{out_dir} exists, is not empty and is not a jaxembed checkpoint")

    hf_config = read_hf_config(src_dir)
    family, config = model_family(hf_config, card, src_dir)
    dtype = jnp.dtype(card.dtype)
    checkpoint = SafetensorsCheckpoint(src_dir)
    for path in module_dirs(config):
        checkpoint.add_module(src_dir / path, f"{path}/")
    try:
        # Every name and shape is checked before anything is written.
        plan = plan_conversion(
            checkpoint,
            family.rules(config),
            family.abstract_params(config, dtype),
            num_layers=config.num_layers,
            ignored_prefixes=family.ignored_prefixes,
            wrapper_prefixes=family.wrapper_prefixes,
        )
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / CARD_FILENAME).unlink(missing_ok=True)  # incomplete until the card is written
        with tqdm(
            total=len(plan.leaves), desc="convert", unit="leaf", disable=not show_progress
        ) as bar:
            param_bytes = save_leaves(
                out_dir / PARAMS_DIRNAME,
                iter_leaves(plan, np.dtype(dtype), lambda *_: bar.update(1)),
            )
    finally:
        checkpoint.close()
    card.save(out_dir / CARD_FILENAME)
    # Written from the parsed config: a static model has none of its own to copy.
    (out_dir / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
    for name in COMPANION_FILES:
        if (src_dir / name).is_file():
            shutil.copy2(src_dir / name, out_dir / name)
    if not (out_dir / "tokenizer.json").is_file():
        write_fast_tokenizer(src_dir, out_dir / "tokenizer.json")
    return ConversionResult(out_dir, card.name, param_bytes, time.perf_counter() - start)


def write_fast_tokenizer(src_dir: Path, path: Path) -> None:
    """A `tokenizer.json` for checkpoints that ship only a slow (sentencepiece) tokenizer.

    The server reads tokenizer.json alone; transformers converts the slow files once here.
    """
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(src_dir))
        tokenizer.backend_tokenizer.save(str(path))
    except Exception as e:  # any failure means the same thing to the user
        raise ModelLoadError(
            f"{src_dir} has no tokenizer.json and its tokenizer could not be converted to one: {e}"
        ) from None
