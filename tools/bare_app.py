"""The floor of any Sanic embedding server: parse an OpenAI embeddings request, answer a fixed
vector of the given width for each input — no tokenizer, no model. `tools/bench_host.py`
measures jaxembed's HTTP path against it.

    python -m tools.bare_app --port 8123 --dim 32
"""

from __future__ import annotations

import argparse
import base64

import numpy as np
import orjson
from sanic import Request, Sanic
from sanic.response import raw


def build(dim: int) -> Sanic:
    app = Sanic("bare_embeddings", configure_logging=False)
    vector = np.linspace(-1, 1, dim, dtype=np.float32)
    vector /= np.linalg.norm(vector)
    encoded = {
        "float": vector.tolist(),
        "base64": base64.b64encode(vector.astype("<f4").tobytes()).decode(),
    }

    async def embeddings(request: Request):
        body = orjson.loads(request.body)
        inputs = body["input"]
        count = 1 if isinstance(inputs, str) else len(inputs)
        row = encoded[body.get("encoding_format", "float")]
        data = [{"object": "embedding", "embedding": row, "index": i} for i in range(count)]
        usage = {"prompt_tokens": count, "total_tokens": count}
        answer = {"object": "list", "data": data, "model": body.get("model"), "usage": usage}
        return raw(orjson.dumps(answer), content_type="application/json")

    async def ready(request: Request):
        return raw(b"ready")

    app.add_route(embeddings, "/v1/embeddings", methods=["POST"])
    app.add_route(ready, "/ready", methods=["GET"])
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dim", type=int, default=384)
    args = parser.parse_args()
    build(args.dim).run(
        host=args.host, port=args.port, single_process=True, motd=False, access_log=False
    )


if __name__ == "__main__":
    main()
