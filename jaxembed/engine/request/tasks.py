"""Which built-in task adapter a job runs with (jina-embeddings-v3), and what that implies.

A task can be named three ways: `model: "<name>:<task>"` (an adapter reference without
a path), the `task` option, or an input type the card maps to a task (`query` →
`retrieval.query`). Whichever names it, the job runs that adapter and is prefixed with
the task's prompt, as the model's own `encode(task=...)` does; two different tasks in
one request are a 400, never a silent pick.
"""

from __future__ import annotations

import dataclasses

from jaxembed.card import ModelCard
from jaxembed.engine.request.jobs import AdapterRef, EmbedOptions
from jaxembed.errors import InvalidInputError


def _named_tasks(card: ModelCard, options: EmbedOptions) -> dict[str, str]:
    """param → task, for every way this job names a task."""
    named: dict[str, str] = {}
    ref = options.adapter
    if ref is not None and ref.path is None and ref.name in card.tasks:
        named["model"] = ref.name
    if options.task is not None:
        named["task"] = options.task
    prompt = options.prompt_name
    if prompt in card.tasks:
        named["input_type"] = prompt
    elif prompt in card.task_for_input_type:
        named["input_type"] = card.task_for_input_type[prompt]
    return named


def resolve_task(card: ModelCard, options: EmbedOptions) -> EmbedOptions:
    """`options` with the named task turned into its adapter and prompt (unchanged if none)."""
    named = _named_tasks(card, options)
    if not named:
        return options
    if options.task is not None and not card.tasks:
        raise InvalidInputError(f"{card.name} has no task adapters", param="task")
    if len(set(named.values())) > 1:
        raise InvalidInputError(
            f"the request names two tasks: {', '.join(f'{p}={t!r}' for p, t in named.items())}",
            param="task",
        )
    task = next(iter(named.values()))
    if task not in card.tasks:
        raise InvalidInputError(
            f"{card.name} has no task {task[:100]!r} (tasks: {', '.join(card.tasks)})",
            param="task",
        )
    if options.adapter is not None and options.adapter.path is not None:
        raise InvalidInputError(
            "a task and a LoRA adapter cannot be combined in one request", param="lora_path"
        )
    if options.instruction is not None:
        raise InvalidInputError(
            "a task brings its own prompt: send no instruction with it", param="instruction"
        )
    return dataclasses.replace(options, task=task, adapter=AdapterRef(task), prompt_name=task)
