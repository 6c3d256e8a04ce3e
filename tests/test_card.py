"""Model cards: derivation from sentence-transformers files and the shipped registry."""

from __future__ import annotations

import pytest

from jaxembed.card import ModelCard, card_from_model_dir
from jaxembed.errors import ModelLoadError
from jaxembed.registry import find_card, read_hf_config, registry_cards, resolve_model


def test_minilm_card_is_derived_from_its_files(minilm_dir):
    card = card_from_model_dir(minilm_dir, read_hf_config(minilm_dir))
    assert (card.family, card.pooling, card.normalize, card.max_length, card.dimensions) == (
        "bert",
        "mean",
        True,
        256,
        384,
    )


def test_shipped_cards():
    cards = registry_cards()
    assert {
        "all-minilm-l6-v2",
        "bge-base-en-v1.5",
        "bge-large-en-v1.5",
        "e5-mistral-7b-instruct",
    } <= set(cards)
    bge = cards["bge-large-en-v1.5"]
    assert (bge.pooling, bge.normalize, bge.dimensions, bge.max_length) == ("cls", True, 1024, 512)
    assert bge.prompts["query"].startswith("Represent this sentence")
    e5 = cards["e5-mistral-7b-instruct"]
    assert (e5.pooling, e5.dtype, e5.append_eos) == ("last_token", "bfloat16", True)
    assert find_card("BAAI/bge-base-en-v1.5").name == "bge-base-en-v1.5"
    assert find_card("ALL-MINILM-L6-V2").name == "all-minilm-l6-v2"


def test_default_spec_resolves_to_the_embedded_package(minilm_dir):
    model_dir, card = resolve_model(None)
    assert model_dir == minilm_dir and card.name == "all-minilm-l6-v2"


def test_card_round_trip(tmp_path):
    card = registry_cards()["bge-base-en-v1.5"]
    card.save(tmp_path / "card.json")
    assert ModelCard.load(tmp_path / "card.json") == card


@pytest.mark.parametrize(
    "change, message",
    [
        ({"pooling": "median"}, "pooling 'median'"),
        ({"dtype": "int8"}, "dtype 'int8'"),
        ({"matryoshka_dims": [5000]}, "outside 1..384"),
        ({"colour": "red"}, "unknown card fields"),
    ],
)
def test_invalid_cards_are_refused(change, message):
    data = registry_cards()["all-minilm-l6-v2"].to_json() | change
    with pytest.raises(ModelLoadError, match=message):
        ModelCard.from_json(data)


def test_matryoshka_dims_restrict_dimensions():
    card = registry_cards()["all-minilm-l6-v2"].replace(matryoshka_dims=(64, 128))
    assert card.allows_dimensions(64) and card.allows_dimensions(384)
    assert not card.allows_dimensions(100)
