"""Architecture rules that code review would otherwise have to remember."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imports(package: str) -> dict[str, set[str]]:
    found = {}
    for path in (ROOT / package).rglob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
        found[str(path.relative_to(ROOT))] = names
    return found


def test_library_never_imports_server():
    offenders = {
        p: n for p, n in _imports("jaxembed").items() if any(x.split(".")[0] == "server" for x in n)
    }
    assert not offenders


def test_models_import_neither_engine_nor_weights():
    bad = ("jaxembed.engine", "jaxembed.weights")
    offenders = {
        p: n for p, n in _imports("jaxembed/models").items() if any(x.startswith(bad) for x in n)
    }
    assert not offenders


def test_no_pickle_loading_anywhere():
    for package in ("jaxembed", "server"):
        for path, names in _imports(package).items():
            assert "pickle" not in names, path
            assert "torch" not in names, f"{path}: torch is a test/conversion reference only"


def test_ruff_lint_and_format_are_clean():
    lint = subprocess.run(
        [sys.executable, "-m", "ruff", "check", str(ROOT)], capture_output=True, text=True
    )
    assert lint.returncode == 0, lint.stdout
    fmt = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--check", str(ROOT)],
        capture_output=True,
        text=True,
    )
    assert fmt.returncode == 0, fmt.stdout
