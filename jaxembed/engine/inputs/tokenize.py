"""Text → token ids with the model's own fast tokenizer, and validation of raw token ids.

Padding and truncation that a `tokenizer.json` may enable are switched off:
padding is the bucketer's job, and an over-long input is an error unless the
caller asked for truncation, in which case the tokenizer truncates the text
part and keeps the special tokens, as sentence-transformers does.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from jaxembed.engine.inputs.chunking import split_ids
from jaxembed.errors import InputTooLongError, InvalidInputError

TRUNCATION_DIRECTIONS = ("right", "left")
_NO_FRAME = (np.zeros(0, np.int32), np.zeros(0, np.int32))


class TextTokenizer:
    """`eos_id`: append this token to every text whose encoding does not already end with it
    (last-token pooled decoders are trained with it); truncation keeps a slot for it."""

    def __init__(
        self,
        model_dir: str | Path,
        max_length: int,
        eos_id: int | None = None,
        *,
        pad_to_max_length: bool = False,
        pad_id: int = 0,
        special_tokens: bool = True,
    ):
        """`special_tokens=False`: the post-processor that frames a text with [CLS]/[SEP] (or
        <s>/</s>) is dropped, so every encoding is the text's own tokens (static models)."""
        path = Path(model_dir) / "tokenizer.json"
        self._special_tokens = special_tokens
        self._tokenizer = self._load(path)
        self._path = path
        self._truncating: dict[tuple[str, int], Tokenizer] = {}
        self.max_length = max_length
        self.vocab_size = self._tokenizer.get_vocab_size(with_added_tokens=True)
        self.eos_id = eos_id
        self.pad_to_max_length = pad_to_max_length
        self.pad_id = pad_id
        # Room for an EOS we add ourselves (none where the post-processor adds it), by
        # whether the special tokens are added: without them we always add it.
        self._eos_slots = {
            special: int(
                eos_id is not None
                and self._tokenizer.encode("a", add_special_tokens=special).ids[-1:] != [eos_id]
            )
            for special in (True, False)
        }

    def _load(self, path: Path) -> Tokenizer:
        tokenizer = Tokenizer.from_file(str(path))
        tokenizer.no_padding()
        tokenizer.no_truncation()
        if not self._special_tokens:
            tokenizer.post_processor = None
        return tokenizer

    def _truncating_tokenizer(self, direction: str, length: int) -> Tokenizer:
        """A copy that truncates every encoding to `length` tokens, special tokens included."""
        key = (direction, length)
        if key not in self._truncating:
            tokenizer = self._load(self._path)
            tokenizer.enable_truncation(length, direction=direction)
            self._truncating[key] = tokenizer
        return self._truncating[key]

    @property
    def backend(self) -> Tokenizer:
        """The fast tokenizer itself (padding and truncation off), for pair encodings."""
        return self._tokenizer

    def limit(self, max_tokens: int | None) -> int:
        """Most tokens of one input: the model's maximum, or a caller's smaller bound."""
        return self.max_length if max_tokens is None else min(max_tokens, self.max_length)

    def check_texts(self, texts: Sequence[str], direction: str = "right") -> None:
        """Refuse what cannot be tokenised, naming the input: not a string, empty, or a
        truncation direction that does not exist."""
        if direction not in TRUNCATION_DIRECTIONS:
            raise InvalidInputError(
                f"truncation_direction must be one of {TRUNCATION_DIRECTIONS}",
                param="truncation_direction",
            )
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise InvalidInputError(f"input[{i}] is not a string", index=i)
            if not text.strip():
                raise InvalidInputError(f"input[{i}] is empty or only whitespace", index=i)

    def raw_ids(self, texts: Sequence[str], add_special_tokens: bool = True) -> list[np.ndarray]:
        """Full token ids (special tokens, EOS) of checked texts, nothing truncated: one
        `encode_batch`, which runs in Rust threads without the GIL."""
        encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=add_special_tokens)
        return [self._with_eos(e.ids) for e in encodings]

    def _encode_checked(
        self, texts: Sequence[str], direction: str, add_special_tokens: bool = True
    ) -> list[np.ndarray]:
        self.check_texts(texts, direction)
        return self.raw_ids(texts, add_special_tokens)

    def encode(
        self,
        texts: Sequence[str],
        *,
        truncate: bool = False,
        direction: str = "right",
        max_tokens: int | None = None,
        add_special_tokens: bool = True,
    ) -> list[np.ndarray]:
        """Token ids (special tokens included unless `add_special_tokens=False`) per text, as
        int32 arrays; at most `max_tokens` (default: the model's maximum) per text, cut on
        `direction`'s side with the special tokens kept when `truncate`, else refused."""
        ids = self._encode_checked(texts, direction, add_special_tokens)
        return self.finish(
            texts,
            ids,
            truncate=truncate,
            direction=direction,
            max_tokens=max_tokens,
            add_special_tokens=add_special_tokens,
        )

    def finish(
        self,
        texts: Sequence[str],
        ids: list[np.ndarray],
        *,
        truncate: bool = False,
        direction: str = "right",
        max_tokens: int | None = None,
        add_special_tokens: bool = True,
    ) -> list[np.ndarray]:
        """`raw_ids` of `texts` within the limit: over-long ones refused, or cut (special
        tokens kept, as the tokenizer's own truncation) when `truncate`; padded where the
        model pads."""
        limit = self.limit(max_tokens)
        lengths = np.fromiter(map(len, ids), np.int64, len(ids))
        too_long = np.flatnonzero(lengths > limit).tolist()
        if too_long and not truncate:
            i = too_long[0]
            raise InputTooLongError(i, len(ids[i]), limit)
        if too_long:
            ids = self._truncated(texts, ids, too_long, limit, direction, add_special_tokens)
        if self.pad_to_max_length:
            return [self._padded(x) for x in ids]
        return ids

    def _truncated(
        self,
        texts: Sequence[str],
        ids: list[np.ndarray],
        too_long: list[int],
        limit: int,
        direction: str,
        add_special_tokens: bool,
    ) -> list[np.ndarray]:
        """`ids` with the over-long rows cut to `limit`: from their ids where the cut is
        certain (`_cut`), by encoding the text again with truncation on otherwise."""
        ids = list(ids)
        redo = []
        for i in too_long:
            cut = self._cut(ids[i], texts[i], limit, direction, add_special_tokens)
            if cut is None:
                redo.append(i)
            else:
                ids[i] = cut
        if redo:
            length = limit - self._eos_slots[add_special_tokens]
            redone = self._truncating_tokenizer(direction, length).encode_batch(
                [texts[i] for i in redo], add_special_tokens=add_special_tokens
            )
            for i, enc in zip(redo, redone, strict=True):
                ids[i] = self._with_eos(enc.ids)
        return ids

    @functools.cached_property
    def _frame(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The special tokens the tokenizer puts before and after a text's own tokens, or
        None when they are not one fixed frame around the text."""
        framed = self._tokenizer.encode("a").ids
        bare = self._tokenizer.encode("a", add_special_tokens=False).ids
        for start in range(len(framed) - len(bare) + 1):
            if framed[start : start + len(bare)] == bare:
                before, after = framed[:start], framed[start + len(bare) :]
                return np.asarray(before, np.int32), np.asarray(after, np.int32)
        return None

    @functools.cached_property
    def _eos_text(self) -> str | None:
        """How a text spells our EOS token, when only spelling it can make it: an added token
        matched on the raw text. None otherwise (an ordinary vocabulary token could end any
        text's encoding, so an EOS at the end of a row might be the text's own)."""
        added = self._tokenizer.get_added_tokens_decoder().get(self.eos_id)
        return None if added is None or added.normalized else added.content

    def _cut(
        self, ids: np.ndarray, text: str, limit: int, direction: str, special: bool
    ) -> np.ndarray | None:
        """`ids` (a `raw_ids` row) cut to `limit` exactly as the truncating tokenizer would
        cut the text — the text's own tokens shortened, the special tokens (and our EOS)
        kept —, without encoding it again; None where that cannot be told from the ids
        alone (the row does not show the frame, or the text spells the EOS token itself)."""
        frame = self._frame if special else _NO_FRAME
        if frame is None:
            return None
        before, after = frame
        core = ids
        slot = self._eos_slots[special]
        if slot:  # the EOS we appended: only ours when the text cannot make one
            if self._eos_text is None or self._eos_text in text:
                return None
            core = ids[:-1]
        keep = limit - slot - len(before) - len(after)
        body_end = len(core) - len(after)
        if keep < 1 or body_end < len(before):
            return None
        if not (
            np.array_equal(core[: len(before)], before) and np.array_equal(core[body_end:], after)
        ):
            return None
        body = core[len(before) : body_end]
        body = body[:keep] if direction == "right" else body[len(body) - keep :]
        return self._with_eos(np.concatenate([before, body, after]))

    def encode_windows(self, texts: Sequence[str], *, max_tokens: int) -> list[list[np.ndarray]]:
        """Per text: its ids as one input if they fit, else windows of the model's length,
        each framed by the special tokens (and EOS) as a normal input would be.

        `max_tokens` bounds a text's full token count (a 400 beyond it).
        """
        ids = self._encode_checked(texts, "right")
        long = [i for i, x in enumerate(ids) if len(x) > self.max_length]
        for i in long:
            if len(ids[i]) > max_tokens:
                raise InputTooLongError(i, len(ids[i]), max_tokens, chunked=True)
        out = [[self._padded(x)] for x in ids]
        if not long:
            return out
        prefix, suffix = self._frame or _NO_FRAME
        width = self.max_length - len(prefix) - len(suffix) - self._eos_slots[True]
        content = self._tokenizer.encode_batch([texts[i] for i in long], add_special_tokens=False)
        for i, encoding in zip(long, content, strict=True):
            body = np.asarray(encoding.ids, dtype=np.int32)
            out[i] = [
                self._padded(self._with_eos(np.concatenate([prefix, chunk, suffix])))
                for chunk in split_ids(body, width)
            ]
        return out

    def check_id_windows(
        self, token_lists: Sequence[Sequence[int]], *, max_tokens: int
    ) -> list[list[np.ndarray]]:
        """Token-id inputs (used as given) cut into slices of the model's length."""
        self.check_ids(token_lists, truncate=True)  # validates every id before truncating
        out = []
        for i, tokens in enumerate(token_lists):
            if len(tokens) > max_tokens:
                raise InputTooLongError(i, len(tokens), max_tokens, chunked=True)
            ids = np.asarray(tokens, dtype=np.int32)
            out.append([self._padded(w) for w in split_ids(ids, self.max_length)])
        return out

    def _padded(self, ids: np.ndarray) -> np.ndarray:
        """Models trained on fixed-length texts (SigLIP) see pads as ordinary positions."""
        if not self.pad_to_max_length or len(ids) >= self.max_length:
            return ids
        pads = np.full(self.max_length - len(ids), self.pad_id, dtype=np.int32)
        return np.concatenate([ids.astype(np.int32), pads])

    def _with_eos(self, ids: list[int] | np.ndarray) -> np.ndarray:
        if self.eos_id is not None and (len(ids) == 0 or ids[-1] != self.eos_id):
            ids = [*ids, self.eos_id]
        return np.asarray(ids, dtype=np.int32)

    def check_ids(
        self,
        token_lists: Sequence[Sequence[int]],
        *,
        truncate: bool = False,
        direction: str = "right",
        max_tokens: int | None = None,
    ) -> list[np.ndarray]:
        """Validate pre-tokenised inputs (used as given: no special tokens are added)."""
        limit = self.limit(max_tokens)
        out = []
        for i, tokens in enumerate(token_lists):
            if len(tokens) == 0:
                raise InvalidInputError(f"input[{i}] is an empty list of token ids", index=i)
            if not all(
                isinstance(t, (int, np.integer)) and not isinstance(t, bool) for t in tokens
            ):
                raise InvalidInputError(f"input[{i}] must contain only integer token ids", index=i)
            bad = self.outside_vocabulary(tokens)
            if bad is not None:
                raise InvalidInputError(
                    f"input[{i}] has token id {bad} outside the vocabulary "
                    f"(0..{self.vocab_size - 1})",
                    index=i,
                )
            arr = np.asarray(tokens, dtype=np.int32)
            if len(arr) > limit:
                if not truncate:
                    raise InputTooLongError(i, len(arr), limit)
                arr = arr[:limit] if direction == "right" else arr[-limit:]
            out.append(self._padded(arr))
        return out

    def outside_vocabulary(self, ids: Sequence[int] | np.ndarray) -> int | None:
        """The first id that is not a token of this vocabulary, or None. Checked on the
        integers as given, so ids past any machine width (2^63 and beyond) are just "outside"
        rather than an overflow."""
        if isinstance(ids, np.ndarray) and ids.dtype.kind in "iu":
            bad = ids[(ids < 0) | (ids >= self.vocab_size)]
            return int(bad[0]) if bad.size else None
        ids = [int(t) for t in ids]
        if not ids or (min(ids) >= 0 and max(ids) < self.vocab_size):
            return None
        return next(t for t in ids if t < 0 or t >= self.vocab_size)

    def decode(self, ids: Sequence[int]) -> str:
        return self._tokenizer.decode(list(ids))
