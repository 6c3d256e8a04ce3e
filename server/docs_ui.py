"""`GET /docs`: Swagger UI over the server's own `/openapi.json`, from assets shipped in a package.

Swagger UI (not Redoc or Scalar) because it lets a user *send* a request from the
page ("Try it out") and enter an API key ("Authorize"), and because its assets
come from PyPI (`swagger-ui-py`, Swagger UI 5, which reads OpenAPI 3.1): servers
here often run without internet, so nothing is fetched from a CDN and the page
makes no request beyond this server (the online spec validator is switched off).

The page, its assets and `/openapi.json` are open without an API key (the API's
contract is not a secret, and a browser cannot send a bearer token to load a
page); every operation still needs the key, which the page's Authorize button sends.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from sanic import Request
from sanic.response import HTTPResponse, raw

ASSETS_URL = "/docs/assets"
# What the page loads; the package's other files (editor bundles, source maps) are not served.
ASSETS = (
    "swagger-ui.css",
    "swagger-ui-bundle.js",
    "favicon-32x32.png",
    "favicon-16x16.png",
)
_CONTENT_TYPES = {".css": "text/css", ".js": "text/javascript", ".png": "image/png"}

PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>jaxembed API</title>
  <link rel="stylesheet" href="{assets}/swagger-ui.css">
  <link rel="icon" type="image/png" href="{assets}/favicon-32x32.png">
  <style>body {{ margin: 0 }}</style>
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="{assets}/swagger-ui-bundle.js"></script>
  <script>
    window.ui = SwaggerUIBundle({{
      url: "/openapi.json",
      dom_id: "#swagger-ui",
      deepLinking: true,
      persistAuthorization: true,
      displayRequestDuration: true,
      tryItOutEnabled: false,
      validatorUrl: null,
      presets: [SwaggerUIBundle.presets.apis],
      layout: "BaseLayout",
    }});
  </script>
</body>
</html>
"""


def assets_dir() -> Path:
    """Swagger UI's files inside the installed `swagger_ui` package (found, not imported)."""
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the swagger-ui-py package is missing: pip install swagger-ui-py")
    return Path(next(iter(spec.submodule_search_locations))) / "static"


def is_open(path: str) -> bool:
    """The docs page, its assets and the OpenAPI document need no API key."""
    return path in ("/docs", "/openapi.json") or path.startswith(ASSETS_URL + "/")


async def docs(request: Request) -> HTTPResponse:
    return raw(PAGE.format(assets=ASSETS_URL).encode(), content_type="text/html; charset=utf-8")


def install(app) -> None:
    directory = assets_dir()
    for name in ASSETS:
        body = (directory / name).read_bytes()  # a few MB, read once at start-up
        content_type = _CONTENT_TYPES[Path(name).suffix]

        async def asset(request: Request, body: bytes = body, content_type: str = content_type):
            return raw(body, content_type=content_type, headers={"Cache-Control": "max-age=86400"})

        app.add_route(asset, f"{ASSETS_URL}/{name}", methods=["GET"], name=f"docs_{name}")
    app.add_route(docs, "/docs", methods=["GET"], name="docs")
