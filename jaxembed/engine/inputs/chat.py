"""Chat-form inputs: a conversation rendered into one text by the model's own chat template.

vLLM's embeddings API accepts `messages` instead of `input`; the template comes from the
model directory (`chat_template.jinja`, or `chat_template` in `tokenizer_config.json`) and is
rendered the way transformers renders it (its Jinja environment), with the tokenizer's
special tokens available to the template.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jaxembed.errors import InvalidInputError

SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "pad_token", "unk_token", "sep_token", "cls_token")
# Arguments of transformers' renderer that `chat_template_kwargs` must not replace.
RESERVED_KWARGS = frozenset(
    {
        "conversations",
        "chat_template",
        "tools",
        "documents",
        "add_generation_prompt",
        "continue_final_message",
        "return_assistant_tokens_mask",
        "messages",
    }
)


def read_template_option(value: str) -> str:
    """A `--chat-template` value: a file's contents if it names a file, else the template
    itself (vLLM's convention), checked to be a Jinja template."""
    path = Path(value)
    try:
        template = path.read_text() if len(value) < 4096 and path.is_file() else value
    except OSError as e:
        raise ValueError(f"cannot read the chat template {value}: {e.strerror}") from None
    check_template(template)
    return template


def check_template(template: str) -> None:
    """A ValueError naming the problem if `template` is not a Jinja template."""
    import jinja2.sandbox

    try:
        jinja2.sandbox.ImmutableSandboxedEnvironment().parse(template)
    except jinja2.TemplateSyntaxError as e:
        raise ValueError(
            f"the chat template is not valid Jinja (line {e.lineno}): {e.message}"
        ) from None


class ChatTemplate:
    def __init__(self, template: str, special_tokens: dict[str, str]):
        self.template = template
        self.special_tokens = special_tokens

    @staticmethod
    def read_model_dir(model_dir: Path) -> tuple[str | None, dict[str, str]]:
        """(the directory's default chat template or None, the tokenizer's special tokens,
        which templates read as `{{ eos_token }}`), from one read of its files."""
        config_path = model_dir / "tokenizer_config.json"
        config = json.loads(config_path.read_text()) if config_path.exists() else {}
        special = {k: v for k in SPECIAL_TOKEN_KEYS if isinstance(v := config.get(k), str)}
        template = config.get("chat_template")
        if (model_dir / "chat_template.jinja").exists():
            template = (model_dir / "chat_template.jinja").read_text()
        if isinstance(template, list):  # named templates: the default one
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default")
        if not isinstance(template, str) or not template.strip():
            template = None
        return template, special

    def render(
        self,
        messages: list[dict[str, Any]],
        *,
        add_generation_prompt: bool = False,
        continue_final_message: bool = False,
        template_kwargs: dict[str, Any] | None = None,
    ) -> str:
        """The conversation as the one text the model embeds; `template_kwargs` are more
        variables for the template (vLLM's `chat_template_kwargs`, e.g. `enable_thinking`)."""
        if add_generation_prompt and continue_final_message:
            raise InvalidInputError(
                "add_generation_prompt and continue_final_message cannot both be true",
                param="continue_final_message",
            )
        extra = dict(template_kwargs or {})
        if clash := sorted(RESERVED_KWARGS & set(extra) | set(self.special_tokens) & set(extra)):
            raise InvalidInputError(
                f"chat_template_kwargs may not set {clash}: the request and the tokenizer set them",
                param="chat_template_kwargs",
            )
        from transformers.utils.chat_template_utils import render_jinja_template

        try:
            rendered, _ = render_jinja_template(
                conversations=[messages],
                chat_template=self.template,
                add_generation_prompt=add_generation_prompt,
                continue_final_message=continue_final_message,
                **self.special_tokens,
                **extra,
            )
        except Exception as e:  # a template's own raise_exception, or messages it cannot take
            raise InvalidInputError(
                f"the chat template refused the messages: {e}", param="messages"
            ) from None
        return rendered[0]
