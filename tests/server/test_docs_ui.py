"""/docs in a real browser: Debian's chromium, driven by Playwright, against a keyed server.

The page must render every operation of /openapi.json, let the user enter the API key
(Authorize) and send `POST /v1/embeddings` with "Try it out" → 200, and load nothing
from anywhere but the server. A screenshot is kept in `test-artifacts/docs-ui.png`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.helpers import ServerProcess

KEY = "docs-key"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def _chromium() -> str:
    """Debian's chromium: found, or installed with apt where this process may (root)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        pytest.skip("no chromium, and apt-get is unavailable here (install Debian's `chromium`)")
    for command in (["apt-get", "install", "-y", "-q", "chromium"], ["apt-get", "update", "-q"]):
        subprocess.run(command, capture_output=True, timeout=900, check=False)
        if command[1] == "update":  # an index refresh, then the install once more
            subprocess.run(
                ["apt-get", "install", "-y", "-q", "chromium"], capture_output=True, timeout=900
            )
        found = shutil.which("chromium")
        if found:
            return found
    pytest.skip("Debian's chromium could not be installed with apt-get (no package index?)")


@pytest.fixture(scope="module")
def browser():
    executable = _chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def keyed_server():
    proc = ServerProcess("--api-key", KEY, "--seq-lengths", "16,32,64")
    yield proc
    assert proc.stop() == 0, proc.log()


def test_docs_page_renders_and_sends_a_request(browser, keyed_server):
    spec = httpx.get(keyed_server.url + "/openapi.json").json()  # open: no key needed
    operations = [op for ops in spec["paths"].values() for op in ops.values()]
    page = browser.new_page(viewport={"width": 1280, "height": 2400})
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(keyed_server.url + "/docs", wait_until="networkidle")
    page.wait_for_selector(".opblock", timeout=30_000)
    assert page.locator(".opblock").count() == len(operations)
    for path in ("/v1/embeddings", "/v1/rerank", "/v1/score", "/embed", "/v2/embed"):
        assert page.locator(f'.opblock-summary-path[data-path="{path}"]').count() >= 1, path

    page.click("button.authorize")
    page.fill(".modal-ux input[type=text], .modal-ux input[type=password]", KEY)
    page.click(".modal-ux button.authorize")
    page.click(".modal-ux button.btn-done")

    operation = page.locator("#operations-OpenAI-createEmbedding")
    operation.locator(".opblock-summary").click()
    operation.locator("button.try-out__btn").click()
    operation.locator("button.execute").click()
    status = operation.locator(".live-responses-table tbody .response-col_status").first
    status.wait_for(timeout=60_000)
    assert status.inner_text().strip().startswith("200")
    assert '"object": "embedding"' in operation.locator(".live-responses-table").inner_text()

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "docs-ui.png"), full_page=False)
    outside = [url for url in requested if not url.startswith(keyed_server.url)]
    assert not outside, outside  # no CDN, no validator, no fonts from elsewhere
    page.close()


def test_operations_still_need_the_key(keyed_server):
    assert httpx.get(keyed_server.url + "/docs").status_code == 200
    asset = httpx.get(keyed_server.url + "/docs/assets/swagger-ui-bundle.js")
    assert asset.status_code == 200 and asset.headers["content-type"].startswith("text/javascript")
    refused = httpx.post(keyed_server.url + "/v1/embeddings", json={"input": "x"})
    assert refused.status_code == 401
