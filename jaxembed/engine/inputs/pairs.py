"""(query, document) pairs → one token row each, read the way the reranker was trained.

Cross-encoders use their tokenizer's own pair encoding (`[CLS] q [SEP] d [SEP]`
with token types for BERT, `<s> q </s></s> d </s>` for XLM-R): query and
document are tokenised on their own and joined by the tokenizer's
post-processor, exactly as `tokenizer(query, document)` does. LM-head rerankers
(Qwen3-Reranker) use their card's `pair_template`: prefix, body and suffix are
tokenised separately as the model's published code does, and the document's
tokens are found in the body by character offsets.

Only the document is cut when a pair is too long (`truncate`, from the right
or the left); a query that leaves less than half of the model's length for
the document is itself cut to that half. Token types are folded into the ids
(`fold_token_types`; the encoder unfolds them on the device), so a pair is one int32 row
like a text.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from tokenizers import Encoding, Tokenizer

from jaxembed.card import ModelCard
from jaxembed.engine.inputs.tokenize import TRUNCATION_DIRECTIONS
from jaxembed.engine.request.jobs import ScoreOptions
from jaxembed.errors import InvalidInputError


@dataclasses.dataclass(frozen=True)
class TokenTypes:
    """How a model tells a pair's two segments apart: its vocabulary size and number of token
    types (0 or 1: it has none, and pairs are plain token rows)."""

    vocab_size: int = 0
    type_vocab_size: int = 0


def fold_token_types(
    ids: Sequence[int], types: Sequence[int], token_types: TokenTypes
) -> np.ndarray:
    """Token ids that also carry their token type: `id + type × vocab_size`.

    A pair `[CLS] q [SEP] d [SEP]` gives its second segment type 1; folding the type
    into the id keeps a row one integer array, so pairs travel through the same
    bucketing, packing, caching and compiled programs as single texts, and the encoder's
    embedding layer unfolds them on the device. Plain texts (type 0) are unchanged.
    """
    if token_types.type_vocab_size < 2:
        return np.asarray(ids, dtype=np.int32)  # one type: nothing to carry
    folded = np.asarray(ids, np.int64) + np.asarray(types, np.int64) * token_types.vocab_size
    return folded.astype(np.int32)


def pair_too_long(index: int, tokens: int, limit: int) -> InvalidInputError:
    return InvalidInputError(
        f"documents[{index}] with the query has {tokens} tokens, more than this model's "
        f"maximum of {limit}; shorten it, or send truncate=true to cut the document",
        index=index,
        param="documents",
        code="context_length_exceeded",
    )


class PairTokenizer:
    def __init__(self, tokenizer: Tokenizer, card: ModelCard, token_types: TokenTypes):
        """`tokenizer`: the model's fast tokenizer, padding and truncation off."""
        self._tokenizer = tokenizer
        self.card = card
        self.token_types = token_types
        self.max_length = card.max_length
        template = card.pair_template
        self._prefix = self._plain_ids(template.get("prefix", ""))
        self._suffix = self._plain_ids(template.get("suffix", ""))

    def limit(self, options: ScoreOptions) -> int:
        """Most tokens of one pair: the model's maximum, or the caller's smaller bound."""
        if options.max_tokens is None:
            return self.max_length
        return min(options.max_tokens, self.max_length)

    def _plain_ids(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=False).ids if text else []

    def encode(
        self, pairs: Sequence[tuple[str, str]], options: ScoreOptions | None = None
    ) -> list[np.ndarray]:
        """One int32 row per (query, document) pair, in order (`options`: truncation and
        instruction fields of the job's ScoreOptions)."""
        options = options or ScoreOptions()
        if options.truncation_direction not in TRUNCATION_DIRECTIONS:
            raise InvalidInputError(
                f"truncation_direction must be one of {TRUNCATION_DIRECTIONS}",
                param="truncation_direction",
            )
        self._check_texts(pairs)
        if self.card.pair_template:
            return self._encode_templated(pairs, options)
        if options.instruction is not None:
            raise InvalidInputError(
                f"{self.card.name} takes no instruction (its card has no pair template)",
                param="instruction",
            )
        return self._encode_with_post_processor(pairs, options)

    @staticmethod
    def _check_texts(pairs: Sequence[tuple[str, str]]) -> None:
        for i, (query, document) in enumerate(pairs):
            if not isinstance(query, str) or not query.strip():
                raise InvalidInputError("the query must be a non-empty string", param="query")
            if not isinstance(document, str):
                raise InvalidInputError(
                    f"documents[{i}] is not a string", index=i, param="documents"
                )

    # -- cross-encoders: the tokenizer's pair encoding -----------------------------------------

    def _encode_with_post_processor(
        self, pairs: Sequence[tuple[str, str]], options: ScoreOptions
    ) -> list[np.ndarray]:
        tok = self._tokenizer
        limit = self.limit(options)
        room = limit - tok.num_special_tokens_to_add(is_pair=True)
        queries = list(dict.fromkeys(q for q, _ in pairs))
        encoded = tok.encode_batch(queries, add_special_tokens=False)
        query_ids = dict(zip(queries, encoded, strict=True))
        documents = tok.encode_batch([d for _, d in pairs], add_special_tokens=False)
        rows = []
        for i, ((query, _), doc) in enumerate(zip(pairs, documents, strict=True)):
            q = query_ids[query]
            if options.max_document_tokens is not None:
                doc.truncate(options.max_document_tokens, direction=options.truncation_direction)
            if len(q) + len(doc) > room:
                if not options.truncate:
                    raise pair_too_long(i, len(q) + len(doc) + limit - room, limit)
                q = self._fit_query(q, room)
                doc.truncate(max(room - len(q), 0), direction=options.truncation_direction)
            pair = tok.post_process(q, doc, add_special_tokens=True)
            rows.append(fold_token_types(pair.ids, pair.type_ids, self.token_types))
        return rows

    def _fit_query(self, query: Encoding, room: int) -> Encoding:
        """A query longer than half the room is cut to that half (a copy: queries are shared)."""
        half = room // 2
        if len(query) <= half:
            return query
        copy = self._tokenizer.post_process(query, add_special_tokens=False)
        copy.truncate(half)
        return copy

    # -- LM-head rerankers: the card's prompt template -------------------------------------------

    def _encode_templated(
        self, pairs: Sequence[tuple[str, str]], options: ScoreOptions
    ) -> list[np.ndarray]:
        template = self.card.pair_template
        instruction = options.instruction or template.get("instruction", "")
        before, after = template["body"].split("{document}", 1)
        bodies, spans = [], []
        for query, document in pairs:
            values = {"instruction": instruction, "query": query}
            head = before.format_map(values)
            bodies.append(head + document + after.format_map(values))
            spans.append((len(head), len(head) + len(document)))
        encodings = self._tokenizer.encode_batch(bodies, add_special_tokens=False)
        frame = len(self._prefix) + len(self._suffix)
        rows = []
        for i, (encoding, span) in enumerate(zip(encodings, spans, strict=True)):
            ids = self._cut_document(encoding, span, frame, options, i)
            rows.append(np.asarray([*self._prefix, *ids, *self._suffix], dtype=np.int32))
        return rows

    def _cut_document(
        self,
        encoding: Encoding,
        span: tuple[int, int],
        frame: int,
        options: ScoreOptions,
        index: int,
    ) -> list[int]:
        """The body's ids with the document's tokens (those overlapping `span`) cut to fit."""
        ids = encoding.ids
        limit = self.limit(options)
        start, end = span
        doc = [j for j, (s, e) in enumerate(encoding.offsets) if e > start and s < end]
        keep = len(doc)
        if options.max_document_tokens is not None:
            keep = min(keep, options.max_document_tokens)
        over = frame + len(ids) - len(doc) + keep - limit
        if over > 0:
            if not options.truncate:
                raise pair_too_long(index, frame + len(ids), limit)
            keep = max(keep - over, 0)
            if frame + len(ids) - len(doc) + keep > limit:
                raise InvalidInputError(
                    f"the query and instruction alone have more than the {limit} tokens a pair "
                    "may have",
                    param="query",
                    code="context_length_exceeded",
                )
        dropped = doc[keep:] if options.truncation_direction == "right" else doc[: len(doc) - keep]
        dropped = set(dropped)
        return [t for j, t in enumerate(ids) if j not in dropped]
