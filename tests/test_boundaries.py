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
    are the EmbeddingService's (jaxembed/engine/service/embedding.py), so both APIs share them."""
    engine_internals = (
        "jaxembed.pooling",
        "jaxembed.engine.batching.cache",
        "jaxembed.engine.service.multimodal",
        "jaxembed.engine.workloads.vision",
        "jaxembed.media",
        "jaxembed.images",
    )

    def internal(module: str) -> bool:  # jaxembed.media, not jaxembed.media_loader (fetching)
        return any(module == m or module.startswith(m + ".") for m in engine_internals)

    offenders = {
        p: sorted(filter(internal, n))
        for p, n in _imports("server").items()
        if any(map(internal, n))
    }
    assert not offenders


def test_no_socket_of_ours_carries_steps():
    """A pod's steps travel through JAX's collectives and its liveness through JAX's
    coordination service (jaxembed/parallel/pod.py): neither the engine nor the parallel
    layer opens a socket of its own."""
    offenders = {
        p: n
        for layer in ("jaxembed/parallel", "jaxembed/engine")
        for p, n in _imports(layer).items()
        if any(x.split(".")[0] in ("socket", "socketserver", "zmq") for x in n)
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


def _module_graph() -> dict[str, set[str]]:
    """Module → the modules of jaxembed/ and server/ it imports (anywhere in the file)."""
    mods: dict[str, Path] = {}
    for root in ("jaxembed", "server"):
        for path in (ROOT / root).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            name = name.removesuffix(".__init__")
            if root == "server":
                name = "jaxembed_server" + name[len("server") :]
            mods[name] = path
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for module, path in mods.items():
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            for target in targets:
                while target and target not in mods:
                    target = target.rsplit(".", 1)[0] if "." in target else ""
                if target and target != module and mods[target].name != "__init__.py":
                    edges[module].add(target)
    return edges


def test_no_import_cycle_anywhere():
    edges = _module_graph()
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    cycles = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(edges[module]):
            if state.get(target) == 1:
                cycles.append(" -> ".join([*path[path.index(target) :], target]))
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert not cycles, cycles[:5]


# The engine's sub-packages in hot-path order: each may import only those before it.
ENGINE_LAYERS = ("request", "inputs", "batching", "device", "workloads", "model", "service")


def test_engine_layers_import_only_the_layers_below():
    def layer(module: str) -> int | None:
        parts = module.split(".")
        if parts[:2] != ["jaxembed", "engine"] or len(parts) < 3:
            return None
        return ENGINE_LAYERS.index(parts[2])

    offenders = []
    for module, targets in _module_graph().items():
        own = layer(module)
        if own is None:
            continue
        for target in targets:
            if target == "jaxembed.api" or ((other := layer(target)) is not None and other > own):
                offenders.append(f"{module} -> {target}")
    assert not offenders, offenders


def test_the_input_half_loads_no_jax():
    """An HTTP front-end process prepares inputs and finishes vectors without JAX."""
    code = (
        "import sys; import jaxembed.engine.service.embedding, jaxembed.engine.inputs.queue; "
        "import jaxembed.card, jaxembed.vectors; "
        "print([m for m in ('jax', 'flax') if m in sys.modules])"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert run.stdout.strip() == "[]", run.stdout + run.stderr
