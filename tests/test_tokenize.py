"""Truncation from the ids: `TextTokenizer.finish` cuts an over-long row without encoding the
text again, and the row must be exactly what the tokenizer's own truncation gives — for every
kind of special-token frame, both directions, with and without an EOS we append."""

from __future__ import annotations

import shutil

import pytest

from jaxembed.engine.inputs.tokenize import TextTokenizer
from tests.helpers import DECODER_EOS, MINILM_DIR, _xlmr_style_tokenizer, qwen_vl_tokenizer
from tests.texts import distinct_passages

TEXTS = [
    *distinct_passages(40),
    "word " * 300,
    "short",
    "ends with the end token " * 20 + "<|endoftext|>",
    "<|endoftext|> starts with it " + "and goes on " * 60,
]


def _tokenizers(tmp_path) -> dict[str, TextTokenizer]:
    (tmp_path / "xlmr").mkdir()
    _xlmr_style_tokenizer(tmp_path / "xlmr")
    (tmp_path / "qwen").mkdir()
    qwen_eos = qwen_vl_tokenizer(tmp_path / "qwen")["<|endoftext|>"]
    return {
        "bert": TextTokenizer(MINILM_DIR, 64),
        "bert, eos in the template": TextTokenizer(MINILM_DIR, 64, eos_id=102),
        "bert, an ordinary token as eos": TextTokenizer(MINILM_DIR, 64, eos_id=DECODER_EOS),
        "roberta": TextTokenizer(tmp_path / "xlmr", 48),
        "qwen, eos appended": TextTokenizer(tmp_path / "qwen", 40, eos_id=qwen_eos),
        "no special tokens": TextTokenizer(MINILM_DIR, 32, special_tokens=False),
    }


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    path = tmp_path_factory.mktemp("tokenizers")
    yield _tokenizers(path)
    shutil.rmtree(path, ignore_errors=True)


class _Spy:
    """Counts the texts that went back to the tokenizer for truncation."""

    def __init__(self, tokenizer: TextTokenizer, monkeypatch):
        self.texts = 0
        real = tokenizer._truncating_tokenizer

        def counting(direction, length):
            inner = real(direction, length)
            spy = self

            class Counting:
                def encode_batch(self, texts, **kw):
                    spy.texts += len(texts)
                    return inner.encode_batch(texts, **kw)

            return Counting()

        monkeypatch.setattr(tokenizer, "_truncating_tokenizer", counting)


@pytest.mark.parametrize("direction", ["right", "left"])
@pytest.mark.parametrize("special", [True, False])
def test_cut_rows_equal_the_tokenizers_own_truncation(tokenizers, direction, special, monkeypatch):
    for name, tokenizer in tokenizers.items():
        for limit in (tokenizer.max_length, 7, 3):
            raw = tokenizer.raw_ids(TEXTS, special)
            slot = tokenizer._eos_slots[special]  # room for the EOS appended after a cut
            want = [
                tokenizer._with_eos(e.ids)
                for e in tokenizer._truncating_tokenizer(direction, limit - slot).encode_batch(
                    TEXTS, add_special_tokens=special
                )
            ]
            spy = _Spy(tokenizer, monkeypatch)
            got = tokenizer.finish(
                TEXTS,
                raw,
                truncate=True,
                direction=direction,
                max_tokens=limit,
                add_special_tokens=special,
            )
            monkeypatch.undo()
            for i, (g, w, r) in enumerate(zip(got, want, raw, strict=True)):
                if len(r) <= limit:
                    assert g is r, (name, i)
                    continue
                assert g.tolist() == w.tolist(), (name, limit, direction, i)
                assert len(g) <= limit
            long = sum(len(r) > limit for r in raw)
            assert long > 0
            # Only what the ids cannot tell goes back to the tokenizer: a text spelling the
            # EOS token itself, or any row when the EOS is an ordinary vocabulary token.
            expected = {"bert, an ordinary token as eos": long, "qwen, eos appended": 2}
            assert spy.texts == expected.get(name, 0), name
