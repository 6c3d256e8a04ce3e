"""docs/cli.md is what the parsers say today (regenerate with `python -m tools.cli_docs`)."""

from __future__ import annotations

from tools.cli_docs import DOC, render


def test_cli_reference_is_current():
    assert DOC.read_text() == render(), "docs/cli.md is stale: run python -m tools.cli_docs"


def test_every_serve_option_is_documented():
    text = render()
    for option in ("--api-workers", "--allow-unknown-fields", "--attention", "--compile-cache"):
        assert f"`{option}`" in text
