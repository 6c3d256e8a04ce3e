"""Confinement of client-named paths to a directory the operator chose."""

from __future__ import annotations

from pathlib import Path


class PathOutsideRoot(ValueError):
    """The path resolves (symlinks and `..` followed) to somewhere outside the root."""


def resolve_inside(root: Path, spec: str) -> Path:
    """`spec` (relative to `root`, or absolute) resolved strictly inside the resolved `root`.

    Raises PathOutsideRoot when it escapes (or is the root itself), ValueError
    when it cannot be a path at all (a NUL byte).
    """
    if "\x00" in spec:
        raise ValueError("NUL byte in path")
    try:
        resolved = (root / spec).resolve()
    except (OSError, RuntimeError) as e:  # symlink loops
        raise ValueError(str(e)) from None
    if not resolved.is_relative_to(root) or resolved == root:
        raise PathOutsideRoot(spec)
    return resolved
