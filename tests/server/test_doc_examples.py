"""The README's and docs' examples run: every fenced block marked `<!-- example: ... -->` is
executed against a real server of the default model (shell blocks with bash, Python blocks in
one namespace per page, in order, so a later block may use an earlier one's `client`)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARKED = re.compile(r"<!-- example: [^\n]*-->\n```(bash|python)\n(.*?)\n```", re.DOTALL)
DEFAULT_PORT = "30000"


def examples(page: Path) -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in MARKED.finditer(page.read_text())]


def _pointed_at(code: str, port: int) -> str:
    """The example with the default address replaced by the test server's."""
    for host in ("127.0.0.1", "localhost"):
        code = code.replace(f"{host}:{DEFAULT_PORT}", f"127.0.0.1:{port}")
    return code


def test_there_are_examples_to_run():
    assert sum(len(examples(p)) for p in PAGES) >= 12


@pytest.mark.parametrize(
    "page", [p for p in PAGES if examples(p)], ids=lambda p: p.relative_to(ROOT).as_posix()
)
def test_marked_examples_run(server, page, monkeypatch):
    import huggingface_hub.constants
    from openai import OpenAI

    # The suite runs offline (no hub); the TEI example's client talks to 127.0.0.1 only.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    namespace = {  # what a reader's session would already have
        "client": OpenAI(base_url=server.url + "/v1", api_key="EMPTY", max_retries=0),
        "long_text": "a sentence about embeddings. " * 200,
    }
    for number, (language, code) in enumerate(examples(page), 1):
        code = _pointed_at(code, server.port)
        assert f":{DEFAULT_PORT}" not in code or "jaxembed serve" in code
        if language == "bash":
            run = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", code],
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert run.returncode == 0, f"example {number}:\n{code}\n{run.stderr}"
            assert '"error"' not in run.stdout, f"example {number}:\n{code}\n{run.stdout}"
        else:
            try:
                exec(compile(code, f"{page.name} example {number}", "exec"), namespace)
            except Exception as e:
                pytest.fail(f"example {number} of {page.name} failed: {e!r}\n{code}")
    if "embedder" in namespace:
        namespace["embedder"].close()
