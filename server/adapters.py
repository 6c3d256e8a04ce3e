"""Which LoRA adapter a request names, and where it may be read from.

`model: "base:NAME"` or `lora_path: NAME` picks an adapter preloaded with
`--lora NAME=PATH`; any other value is a path, accepted only when
`--lora-root` is set and only if it resolves (symlinks and `..` included)
to a directory inside that root. Refusals never echo server paths.
"""

from __future__ import annotations

from pathlib import Path

from jaxembed.errors import AdapterError
from jaxembed.paths import PathOutsideRoot, resolve_inside


class AdapterResolver:
    def __init__(self, preloaded: dict[str, Path], root: Path | None):
        self.preloaded = preloaded
        self.root = root.resolve() if root is not None else None

    def resolve(self, spec: str, param: str = "lora_path") -> tuple[str, Path]:
        """(adapter name, directory) for a request's adapter reference."""
        if spec in self.preloaded:
            return spec, self.preloaded[spec]
        if self.root is None:
            known = ", ".join(sorted(self.preloaded)) or "none"
            raise AdapterError(
                f"unknown adapter {spec[:100]!r} (loaded adapters: {known}; "
                "paths are accepted only when the server has --lora-root)",
                param=param,
            )
        try:
            resolved = resolve_inside(self.root, spec)
        except PathOutsideRoot:
            raise AdapterError(
                "the adapter path points outside the server's adapter root", param=param
            ) from None
        except ValueError:
            raise AdapterError("the adapter path is not valid", param=param) from None
        if not resolved.is_dir():
            raise AdapterError(f"unknown adapter {spec[:100]!r}", param=param)
        return str(resolved.relative_to(self.root)), resolved
