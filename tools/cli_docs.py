"""docs/cli.md from the argument parsers themselves: every command, option, default and help
line, so the reference cannot drift from `--help` (tests/test_cli_docs.py regenerates it and
compares).

    python -m tools.cli_docs            # rewrite docs/cli.md
    python -m tools.cli_docs --check    # exit 1 if docs/cli.md is stale
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jaxembed.cli import build_parser

DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"
HEADER = """# Command-line reference

Generated from the argument parsers by `python -m tools.cli_docs` (a test checks it is current);
`jaxembed COMMAND --help` prints the same. How to use them: the [README](../README.md);
the `--config` file: [operations](operations.md#the---config-file-several-models-per-model-options).
"""


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _default(action: argparse.Action) -> str:
    if action.default in (None, False, argparse.SUPPRESS) or isinstance(
        action, argparse._HelpAction
    ):
        return ""
    if isinstance(action.default, list | tuple) and not action.default:
        return ""
    return f"`{action.default}`"


def _option(action: argparse.Action) -> str:
    names = (
        ", ".join(f"`{name}`" for name in action.option_strings)
        or f"`{action.metavar or action.dest}`"
    )
    if action.choices:
        names += " " + " / ".join(f"`{c}`" for c in action.choices)
    elif action.nargs != 0 and action.option_strings:
        names += f" {action.metavar or action.dest.upper()}"
    return names


def _table(actions: list[argparse.Action]) -> list[str]:
    rows = ["| option | default | what it does |", "|---|---|---|"]
    for action in actions:
        if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
            continue
        rows.append(
            f"| {_cell(_option(action))} | {_default(action)} | {_cell(action.help or '')} |"
        )
    return rows if len(rows) > 2 else []


def _command(name: str, parser: argparse.ArgumentParser, summary: str) -> list[str]:
    lines = [f"## `jaxembed {name}`", "", summary, ""]
    plain = ("positional arguments", "options", "optional arguments")
    groups = [g for g in parser._action_groups if g.title in plain]
    lines += [*_table([a for g in groups for a in g._group_actions]), ""]
    for group in parser._action_groups:
        if group.title in plain or not (table := _table(group._group_actions)):
            continue
        lines += [f"### {group.title}", ""]
        if group.description:
            lines += [group.description, ""]
        lines += [*table, ""]
    return lines


def render() -> str:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    summaries = {choice.dest: choice.help or "" for choice in sub._choices_actions}
    lines = [HEADER]
    lines += ["| command | |", "|---|---|"]
    lines += [
        f"| [`{name}`](#jaxembed-{name}) | {_cell(summaries.get(name, ''))} |"
        for name in sub.choices
    ]
    lines.append("")
    for name, command in sub.choices.items():
        lines += _command(name, command, summaries.get(name, ""))
    return "\n".join(lines).rstrip() + "\n"


def main() -> int:
    text = render()
    if "--check" in sys.argv[1:]:
        if DOC.read_text() != text:
            print(f"{DOC} is stale: run python -m tools.cli_docs", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(text)
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
