"""The server's OpenAPI 3.1 document, built from the pydantic models (Swagger UI reads it: server/docs_ui.py)."""

from __future__ import annotations

import dataclasses

from pydantic.json_schema import models_json_schema

from jaxembed_server.api_cohere import CohereEmbedRequest, CohereError
from jaxembed_server.api_rerank import RerankRequest, TEIRerankRequest
from jaxembed_server.api_score import ScoreRequest
from jaxembed_server.api_tei import TEIEmbedRequest, TEIEmbedSparseRequest, TEIError
from jaxembed_server.openapi_examples import (
    EXAMPLES_BY_SCHEMA,
    STATUS_MEANINGS,
    embedding_examples,
)
from jaxembed_server.protocol import (
    DetokenizeRequest,
    EmbeddingRequest,
    EmbeddingResponse,
    ErrorResponse,
    TokenizeRequest,
    TokenizeResponse,
)

_MODELS = [
    EmbeddingRequest,
    EmbeddingResponse,
    ErrorResponse,
    TokenizeRequest,
    TokenizeResponse,
    DetokenizeRequest,
    TEIEmbedRequest,
    TEIEmbedSparseRequest,
    TEIError,
    CohereEmbedRequest,
    CohereError,
    RerankRequest,
    TEIRerankRequest,
    ScoreRequest,
]


@dataclasses.dataclass(frozen=True)
class ServedModel:
    """What this server accepts beyond the generic protocol, written into its document.

    The constraints a JSON schema can express (names, dimension range, token-id
    range, non-blank texts, list sizes) are declared, so clients and fuzzers
    (schemathesis) see the real contract; token counts cannot be expressed and
    stay a documented 400 (`context_length_exceeded`).
    """

    names: tuple[str, ...]
    dimensions: int
    vocab_size: int
    max_inputs: int
    instructions: bool  # the card has an instruction template
    lora: bool = False
    # Model names the examples use: the first embedding model, the first reranker.
    example_model: str = "all-minilm-l6-v2"
    example_reranker: str = "reranker"


def _constrain(schemas: dict, served: ServedModel) -> None:
    text = {"type": "string", "minLength": 1, "pattern": "\\S"}
    token = {"type": "integer", "minimum": 0, "maximum": served.vocab_size - 1}
    many = {"minItems": 1, "maxItems": served.max_inputs}
    model = {"anyOf": [{"enum": list(served.names)}, {"type": "null"}]}
    if served.lora:
        model = {"anyOf": [{"type": "string"}, {"type": "null"}]}
    for name in ("EmbeddingRequest", "TokenizeRequest"):
        props = schemas[name]["properties"]
        for variant in props["input"]["anyOf"]:
            if variant.get("type") == "string":
                variant.update(text)
            elif variant.get("type") == "array":
                variant.update(many)
                items = variant["items"]
                if items.get("type") == "string":
                    items.update(text)
                elif items.get("type") == "integer":
                    items.update(token)
                elif items.get("type") == "array":
                    items.update({"minItems": 1, "items": token})
        props["model"].update(model)
        if not served.instructions:
            props["instruction"]["anyOf"] = [{"type": "null"}]
    request = schemas["EmbeddingRequest"]["properties"]
    request["dimensions"]["anyOf"][0].update({"minimum": 1, "maximum": served.dimensions})
    if not served.lora:
        request["lora_path"]["anyOf"] = [{"type": "null"}]


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _errors(*codes: int, shape: str = "ErrorResponse") -> dict:
    """Error responses; every route also answers 401 in OpenAI's shape (API keys)."""
    body = lambda name: {  # noqa: E731
        "description": "error",
        "content": {"application/json": {"schema": _ref(name)}},
    }
    return {str(c): body("ErrorResponse" if c == 401 else shape) for c in codes}


def _peer_paths() -> dict:
    """TEI's, Cohere's, vLLM's and Infinity's routes (server/api_*.py, route_tokens.py)."""
    vectors = {
        "description": "OK",
        "content": {"application/json": {"schema": {"type": "array", "items": {"type": "array"}}}},
    }
    obj = {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}}
    tei = _errors(400, 401, 413, 422, 424, 429, 503, shape="TEIError")
    cohere = _errors(400, 401, 404, 429, 500, 503, shape="CohereError")
    embeddings_ops = {"200": _ok("EmbeddingResponse"), **_errors(400, 401, 404, 413, 500, 503, 504)}

    post = lambda op_id, summary, name, responses: _post(op_id, summary, _ref(name), responses)  # noqa: E731

    return {
        "/embed": post(
            "teiEmbed",
            "TEI: embed (a bare list of vectors)",
            "TEIEmbedRequest",
            {"200": vectors, **tei},
        ),
        "/": post(
            "teiRoot",
            "TEI: the root route (huggingface_hub feature extraction)",
            "TEIEmbedRequest",
            {"200": vectors, **tei},
        ),
        "/embed_sparse": post(
            "teiEmbedSparse",
            "TEI: sparse (SPLADE) vectors, [{index, value}] per input",
            "TEIEmbedSparseRequest",
            {"200": vectors, **tei},
        ),
        "/info": {
            "get": {
                "summary": "TEI: model and limits",
                "operationId": "teiInfo",
                "responses": {"200": obj, **_errors(401)},
            }
        },
        "/v2/embed": post(
            "cohereEmbedV2", "Cohere: embed (v2)", "CohereEmbedRequest", {"200": obj, **cohere}
        ),
        "/v1/embed": post(
            "cohereEmbedV1", "Cohere: embed (v1)", "CohereEmbedRequest", {"200": obj, **cohere}
        ),
        "/detokenize": post(
            "detokenize",
            "vLLM: token ids back to text",
            "DetokenizeRequest",
            {"200": obj, **_errors(400, 401, 404)},
        ),
        "/invocations": post(
            "invocations",
            "SageMaker/vLLM: an embeddings request",
            "EmbeddingRequest",
            embeddings_ops,
        ),
        "/embeddings": post(
            "createEmbeddingInfinity",
            "Infinity: /v1/embeddings",
            "EmbeddingRequest",
            embeddings_ops,
        ),
    }


def _rerank_paths() -> dict:
    """Rerank (Cohere/Jina on /v1, /v2 and /rerank; TEI's body on /rerank) and vLLM's score."""
    obj = {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}}
    cohere = _errors(400, 401, 404, 429, 500, 503, shape="CohereError")
    either = {"anyOf": [_ref("CohereError"), _ref("TEIError")]}
    both = {
        str(code): {"description": "error", "content": {"application/json": {"schema": either}}}
        for code in (400, 404, 413, 422, 424, 429, 500, 503)
    }

    post = _post
    rerank = _ref("RerankRequest")
    any_shape = {"anyOf": [rerank, _ref("TEIRerankRequest")]}
    ranked = {"description": "OK", "content": {"application/json": {"schema": {}}}}
    score_ops = {"200": obj, **_errors(400, 401, 404, 413, 500, 503, 504)}
    return {
        "/v1/rerank": post(
            "rerankV1", "Rerank documents (Cohere/Jina)", rerank, {"200": obj, **cohere}
        ),
        "/v2/rerank": post(
            "rerankV2", "Rerank documents (Cohere v2)", rerank, {"200": obj, **cohere}
        ),
        "/rerank": post(
            "rerank",
            "Rerank: Cohere/Jina body (documents), or TEI's (texts: a bare list back)",
            any_shape,
            {"200": ranked, **both, **_errors(401)},
        ),
        "/v1/score": post("scoreV1", "vLLM: score text pairs", _ref("ScoreRequest"), score_ops),
        "/score": post("score", "vLLM: score text pairs", _ref("ScoreRequest"), score_ops),
    }


def _json_body(name: str) -> dict:
    return _schema_body(_ref(name))


def _schema_body(schema: dict) -> dict:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _post(op_id: str, summary: str, schema: dict, responses: dict) -> dict:
    """A POST operation whose JSON body follows `schema`."""
    body = _schema_body(schema)
    return {
        "post": {
            "summary": summary,
            "operationId": op_id,
            "requestBody": body,
            "responses": responses,
        }
    }


def _ok(name: str) -> dict:
    return {"description": "OK", "content": {"application/json": {"schema": _ref(name)}}}


_PLAIN = {"description": "OK", "content": {"text/plain": {"schema": {"type": "string"}}}}


def _core_paths() -> dict:
    """The OpenAI route, tokenisation, models, probes and metrics."""
    return {
        "/v1/embeddings": {
            "post": {
                "summary": "Create embeddings",
                "operationId": "createEmbedding",
                "requestBody": _json_body("EmbeddingRequest"),
                "responses": {
                    "200": _ok("EmbeddingResponse"),
                    **_errors(400, 401, 404, 413, 500, 503, 504),
                },
            }
        },
        "/tokenize": {
            "post": {
                "summary": "Tokenize texts with the model's tokenizer",
                "operationId": "tokenize",
                "requestBody": _json_body("TokenizeRequest"),
                "responses": {"200": _ok("TokenizeResponse"), **_errors(400, 401, 404, 413)},
            }
        },
        "/v1/models": {
            "get": {
                "summary": "List served models",
                "operationId": "listModels",
                "responses": {"200": {"description": "OK"}, **_errors(401)},
            }
        },
        "/health": {
            "get": {"summary": "Process is alive", "security": [], "responses": {"200": _PLAIN}}
        },
        "/ready": {
            "get": {
                "summary": "Warm-up finished and accepting",
                "security": [],
                "responses": {"200": _PLAIN, "503": _PLAIN},
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "responses": {"200": _PLAIN, **_errors(401)},
            }
        },
    }


def build_openapi(version: str, *, auth: bool = True, served: ServedModel | None = None) -> dict:
    """The document of this server: bearer auth only when API keys are set, model limits if given."""
    _, schema = models_json_schema(
        [(m, "validation" if m.__name__.endswith("Request") else "serialization") for m in _MODELS],
        ref_template="#/components/schemas/{model}",
    )

    if served is not None:
        _constrain(schema["$defs"], served)

    document = {
        "openapi": "3.1.0",
        "tags": [{"name": tag} for tag, _ in _TAGS] + [{"name": "Operations"}],
        "info": {
            "title": "jaxembed",
            "version": version,
            "description": "OpenAI-compatible embeddings on JAX/XLA",
        },
        "components": {
            "schemas": schema.get("$defs", {}),
            **(
                {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}}
                if auth
                else {}
            ),
        },
        "security": [{"bearer": []}] if auth else [],
        "paths": {
            **_core_paths(),
            **_peer_paths(),
            **_rerank_paths(),
        },
    }
    _root_get(document["paths"])
    served = served or ServedModel((), 1, 1, 1, False)
    _describe(document["paths"], served.example_model, served.example_reranker)
    return document


def _examples_for(schema: dict, model: str, reranker: str) -> dict:
    refs = [schema] if "$ref" in schema else schema.get("anyOf", [])
    examples: dict = {}
    for ref in refs:
        name = ref.get("$ref", "").rsplit("/", 1)[-1]
        if name == "EmbeddingRequest":
            examples.update(embedding_examples(model))
        elif name in EXAMPLES_BY_SCHEMA:
            examples.update(EXAMPLES_BY_SCHEMA[name](model, reranker))
    return examples


# Operations grouped by the API family a user comes from (the sections of /docs).
_TAGS = (
    ("OpenAI", ("/v1/embeddings", "/embeddings", "/invocations")),
    ("Rerank and score", ("/v1/rerank", "/v2/rerank", "/rerank", "/v1/score", "/score")),
    ("TEI", ("/embed", "/embed_sparse", "/info")),
    ("Cohere", ("/v2/embed", "/v1/embed")),
    ("vLLM tokens", ("/tokenize", "/detokenize")),
)


def _tag(path: str, method: str) -> str:
    if path == "/" and method == "post":
        return "TEI"
    return next((tag for tag, paths in _TAGS if path in paths), "Operations")


def _describe(paths: dict, model: str, reranker: str) -> None:
    """Tags, examples on every request body, what each error status means on every response."""
    for path, operations in paths.items():
        for method, operation in operations.items():
            operation["tags"] = [_tag(path, method)]
            body = operation.get("requestBody", {}).get("content", {}).get("application/json")
            if body is not None:
                examples = _examples_for(body["schema"], model, reranker)
                if examples:
                    body["examples"] = examples
            for status, response in operation.get("responses", {}).items():
                if (
                    status.isdigit()
                    and int(status) in STATUS_MEANINGS
                    and response.get("description") in ("error", None)
                ):
                    response["description"] = STATUS_MEANINGS[int(status)]


def _root_get(paths: dict) -> dict:
    """`GET /` beside TEI's `POST /`."""
    paths["/"]["get"] = {
        "summary": "Server name, version, models and where the docs are",
        "operationId": "root",
        "responses": {"200": {"description": "OK"}, **_errors(401)},
    }
    return paths
