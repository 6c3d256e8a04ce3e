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
    http = ("server", "jaxembed_server")
    offenders = {
        p: n for p, n in _imports("jaxembed").items() if any(x.split(".")[0] in http for x in n)
    }
    assert not offenders


def test_packages_in_the_build_are_every_package_in_the_tree():
    """pyproject lists packages explicitly (server/ installs as jaxembed_server): a new
    subpackage must be added there, or a wheel would silently lack it."""
    import tomllib

    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    on_disk = {
        ".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "jaxembed").rglob("__init__.py")
    } | {"jaxembed_server"}
    assert listed == on_disk


def test_models_import_neither_engine_nor_weights():
    bad = ("jaxembed.engine", "jaxembed.weights")
    offenders = {
        p: n for p, n in _imports("jaxembed/models").items() if any(x.startswith(bad) for x in n)
    }
    assert not offenders


def test_parallel_never_imports_engine():
    """parallel/ is mesh, sharding rules and multi-host transport; the engine builds on it."""
    offenders = {
        p: n
        for p, n in _imports("jaxembed/parallel").items()
        if any(x.startswith("jaxembed.engine") for x in n)
    }
    assert not offenders


def test_server_only_talks_to_the_service():
    """The HTTP layer parses, fetches and answers; pooling, the cache, decoding and fusion
    are the EmbeddingService's (jaxembed/engine/service.py), so both APIs share them."""
    engine_internals = (
        "jaxembed.pooling",
        "jaxembed.engine.cache",
        "jaxembed.engine.multimodal",
        "jaxembed.engine.vision",
        "jaxembed.media",
        "jaxembed.images",
    )
    offenders = {
        p: sorted(x for x in n if x.startswith(engine_internals))
        for p, n in _imports("server").items()
        if any(x.startswith(engine_internals) for x in n)
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
