"""`ModelInputs`: everything about turning a request's text into a model's token rows —
prompts, instructions, chat templates, pairs, windows, and the checks that refuse what the
model cannot take. No JAX and no weights: an HTTP front-end process builds one from a
model's card and directory and tokenises there, off the process that owns the devices.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxembed.card import ModelCard
from jaxembed.engine.inputs.chat import ChatTemplate, check_template
from jaxembed.engine.inputs.chunking import MAX_EMBED_FACTOR, ChunkPlan
from jaxembed.engine.inputs.pairs import PairTokenizer, TokenTypes
from jaxembed.engine.inputs.tokenize import TextTokenizer
from jaxembed.errors import InvalidInputError

Inputs = str | Sequence[str] | Sequence[int] | Sequence[Sequence[int]]
# Input types every model accepts; a card without a prompt for one means "no prefix".
STANDARD_INPUT_TYPES = ("query", "document")
# The prompt names sentence-transformers' encode_query / encode_document try, in order.
INPUT_TYPE_PROMPTS = {"query": ("query",), "document": ("document", "passage", "corpus")}


def classify_inputs(inputs: Inputs) -> tuple[str, list]:
    """("text", [str, ...]) or ("tokens", [[int, ...], ...]); anything else is invalid input."""
    if isinstance(inputs, str):
        return "text", [inputs]
    if not isinstance(inputs, Sequence | np.ndarray) or len(inputs) == 0:
        raise InvalidInputError("input must be a string or a non-empty list")
    items = list(inputs)
    if all(isinstance(x, str) for x in items):
        return "text", items
    if all(isinstance(x, int | np.integer) and not isinstance(x, bool) for x in items):
        return "tokens", [items]
    if all(isinstance(x, Sequence | np.ndarray) and not isinstance(x, str) for x in items):
        return "tokens", [list(x) for x in items]
    raise InvalidInputError(
        "input must be a string, a list of strings, a list of token ids or a list of token-id lists"
    )


@dataclasses.dataclass(frozen=True)
class InputsSpec:
    """What a process needs to build a model's `ModelInputs` without loading the model: the
    engine process sends it to the HTTP front-ends (plain data, JSON-safe)."""

    card: dict[str, Any]
    model_dir: str
    eos_id: int | None
    pad_id: int
    token_types: tuple[int, int]
    max_embed_len: int


class ModelInputs:
    """A model's input side: card, tokenizer, pair tokenizer, chat template, prompts."""

    def __init__(
        self,
        card: ModelCard,
        model_dir: str | Path,
        *,
        eos_id: int | None = None,
        pad_id: int = 0,
        token_types: TokenTypes | None = None,
        max_embed_len: int | None = None,
    ):
        """`eos_id`: appended to every text (last-token pooled decoders); `token_types`: how
        pairs carry their segments; `max_embed_len`: most tokens of one input embedded with
        `chunking` (default 16x the model's maximum)."""
        self.card = card
        self.model_dir = Path(model_dir)
        self.eos_id = eos_id
        self.pad_id = pad_id
        self.token_types = token_types = token_types or TokenTypes()
        self.max_embed_len = max_embed_len or MAX_EMBED_FACTOR * card.max_length
        self.tokenizer = TextTokenizer(
            model_dir,
            card.max_length,
            eos_id=eos_id,
            pad_to_max_length=card.pad_to_max_length,
            pad_id=pad_id,
            special_tokens=card.special_tokens,
        )
        self.pairs = (
            PairTokenizer(self.tokenizer.backend, card, token_types)
            if card.kind == "reranker"
            else None
        )
        template, self.special_tokens = ChatTemplate.read_model_dir(self.model_dir)
        self.chat_template = ChatTemplate(template, self.special_tokens) if template else None

    def spec(self) -> InputsSpec:
        return InputsSpec(
            card=self.card.to_json(),
            model_dir=str(self.model_dir),
            eos_id=self.eos_id,
            pad_id=self.pad_id,
            token_types=(self.token_types.vocab_size, self.token_types.type_vocab_size),
            max_embed_len=self.max_embed_len,
        )

    @classmethod
    def from_spec(cls, spec: InputsSpec) -> ModelInputs:
        return cls(
            ModelCard.from_json(spec.card),
            spec.model_dir,
            eos_id=spec.eos_id,
            pad_id=spec.pad_id,
            token_types=TokenTypes(*spec.token_types),
            max_embed_len=spec.max_embed_len,
        )

    @property
    def dimensions(self) -> int:
        return self.card.dimensions

    @property
    def max_length(self) -> int:
        return self.card.max_length

    # -- checks ---------------------------------------------------------------------------------

    def check_dimensions(self, dimensions: int | None) -> None:
        if dimensions is None:
            return
        if isinstance(dimensions, bool) or not isinstance(dimensions, int | np.integer):
            raise InvalidInputError("dimensions must be an integer", param="dimensions")
        if not self.card.allows_dimensions(int(dimensions)):
            allowed = (
                f"one of {sorted({*self.card.matryoshka_dims, self.dimensions})}"
                if self.card.matryoshka_dims
                else f"between 1 and {self.dimensions}"
            )
            raise InvalidInputError(
                f"dimensions={dimensions} is not supported by {self.card.name}: use {allowed}",
                param="dimensions",
            )

    def check_instruction(self, instruction: str | None) -> None:
        """An instruction is an error for a model without a template, whatever the input."""
        if instruction is not None and not (
            self.card.instruction_template or self.card.vl_template
        ):
            raise InvalidInputError(
                f"{self.card.name} takes no instructions (its card has no instruction template)",
                param="instruction",
            )

    # -- prompts and chat ---------------------------------------------------------------------

    def vl_instruction(self, prompt_name: str | None, instruction: str | None) -> str | None:
        """A vision-language model's instruction: the request's own, else its input type's
        (the card's prompts: a query's retrieval instruction), else None — the recipe's
        default, which documents get."""
        return instruction if instruction is not None else self.named_prompt(prompt_name)

    def named_prompt(self, prompt_name: str | None) -> str | None:
        """The card's prompt called `prompt_name`, as sentence-transformers picks it: no name →
        the card's `default_prompt_name` (if any); a standard input type → its prompt under
        any of the names ST tries (`encode_query`: query; `encode_document`: document, passage,
        corpus), else the default (documents of a model that only prompts queries get none)."""
        prompts = self.card.prompts
        default = (
            prompts.get(self.card.default_prompt_name) if self.card.default_prompt_name else None
        )
        if prompt_name is None:
            return default
        if prompt_name in STANDARD_INPUT_TYPES:
            names = INPUT_TYPE_PROMPTS[prompt_name]
            return next((prompts[n] for n in names if n in prompts), default)
        if prompt_name not in self.card.prompts:
            known = sorted(self.card.prompts) or "none"
            raise InvalidInputError(
                f"{self.card.name} has no prompt {prompt_name!r} (prompts: {known})",
                param="input_type",
            )
        return self.card.prompts[prompt_name]

    def use_chat_template(self, template: str) -> None:
        """Replace the directory's chat template (or give a model without one its first): the
        server's `--chat-template`."""
        self.chat_template = ChatTemplate(template, self.special_tokens)

    def render_messages(
        self, messages: list[dict], *, template: str | None = None, **flags: Any
    ) -> str:
        """A chat conversation → the one text to embed: the model's chat template, or
        `template` (a request's own, already allowed by the caller)."""
        chat = self.chat_template
        if template is not None:
            try:
                check_template(template)
            except ValueError as e:
                raise InvalidInputError(str(e), param="chat_template") from None
            chat = ChatTemplate(template, self.special_tokens)
        if chat is None:
            raise InvalidInputError(
                f"{self.card.name} has no chat template (tokenizer_config.json / "
                "chat_template.jinja; or start the server with --chat-template): send `input` "
                "instead of `messages`",
                param="messages",
            )
        return chat.render(messages, **flags)

    def apply_prompt(
        self, texts: Sequence[str], prompt_name: str | None, instruction: str | None = None
    ) -> list[str]:
        """Prefix texts with the card's named prompt, or with `instruction` in the card's template."""
        if instruction is not None:
            self.check_instruction(instruction)
            prefix = self.card.instruction_template.format(instruction=instruction)
            return [prefix + t for t in texts]
        prefix = self.named_prompt(prompt_name)
        return list(texts) if not prefix else [prefix + t for t in texts]

    # -- token rows ---------------------------------------------------------------------------

    def tokenize(
        self,
        inputs: Inputs,
        *,
        truncate: bool = False,
        truncation_direction: str = "right",
        prompt_name: str | None = None,
        instruction: str | None = None,
        max_tokens: int | None = None,
        add_special_tokens: bool = True,
    ) -> list[np.ndarray]:
        """Token ids per input (texts through the tokenizer, token ids validated as they are).

        Prompts and instructions apply to texts only: token ids are used exactly as given
        (an instruction the model cannot take is refused for them too). `max_tokens` lowers
        the per-input limit below the model's maximum (`truncate` cuts to it).
        """
        self.check_instruction(instruction)
        kind, items = classify_inputs(inputs)
        if kind == "text":
            return self.tokenizer.encode(
                self.apply_prompt(items, prompt_name, instruction),
                truncate=truncate,
                direction=truncation_direction,
                max_tokens=max_tokens,
                add_special_tokens=add_special_tokens,
            )
        return self.tokenizer.check_ids(
            items, truncate=truncate, direction=truncation_direction, max_tokens=max_tokens
        )

    def tokenize_windows(
        self,
        inputs: Inputs,
        *,
        prompt_name: str | None = None,
        instruction: str | None = None,
    ) -> ChunkPlan:
        """Like `tokenize`, but an input longer than the model becomes several windows
        (engine/inputs/chunking.py); at most `max_embed_len` tokens per input."""
        self.check_instruction(instruction)
        kind, items = classify_inputs(inputs)
        if kind == "text":
            texts = self.apply_prompt(items, prompt_name, instruction)
            windows = self.tokenizer.encode_windows(texts, max_tokens=self.max_embed_len)
        else:
            windows = self.tokenizer.check_id_windows(items, max_tokens=self.max_embed_len)
        return ChunkPlan.from_windows(windows)
