"""Write constraints.txt: the installed versions of jaxembed[test]'s whole dependency closure.

Run after upgrading dependencies on purpose (and after the suite passed with them):

    python -m tools.freeze_constraints
"""

from __future__ import annotations

import importlib.metadata as metadata
import re
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

HEADER = """\
# The versions the test suite was last run with (the jaxembed[test] dependency closure).
# Used by .ci/run and the README's test command (`pip install -e ".[test]" -c constraints.txt`)
# so that a new release of a dependency cannot turn CI red overnight. Regenerate after
# upgrading on purpose: python -m tools.freeze_constraints
"""


def closure(root: str = "jaxembed", extras: tuple[str, ...] = ("", "test")) -> dict[str, str]:
    """Installed version of every distribution `root` (with `extras`) needs, transitively."""
    pins: dict[str, str] = {}
    seen: set[tuple[str, tuple[str, ...]]] = set()

    def visit(text: str, active: tuple[str, ...]) -> None:
        req = Requirement(text)
        if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in active):
            return
        key = (canonicalize_name(req.name), tuple(sorted(req.extras)))
        if key in seen:
            return
        seen.add(key)
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            return
        pins[key[0]] = re.sub(r"\+.*$", "", dist.version)  # local tags (+cpu) are the index's
        for sub in dist.requires or []:
            visit(sub, tuple(req.extras) or ("",))

    for text in metadata.distribution(root).requires or []:
        visit(text, extras)
    pins.pop(canonicalize_name(root), None)
    return pins


def main() -> None:
    pins = closure()
    out = Path(__file__).resolve().parents[1] / "constraints.txt"
    out.write_text(HEADER + "".join(f"{n}=={v}\n" for n, v in sorted(pins.items())))
    print(f"wrote {len(pins)} pins to {out}")


if __name__ == "__main__":
    main()
