"""Request examples and error meanings for the OpenAPI document: what /docs shows a user.

Each operation's first example is one the default server answers with 200 as sent
(Swagger UI pre-fills "Try it out" with it); the others show each extension.
"""

from __future__ import annotations

# What each status means on jaxembed's routes, and the `code` values it carries.
STATUS_MEANINGS = {
    400: "Invalid request. `code`: context_length_exceeded (an input or pair over the model's "
    "length; send truncate), wrong_model_kind (an embedding model on a rerank route or the "
    "reverse), lora_not_enabled, invalid_media, invalid_image, invalid_video, media_forbidden "
    "(private address without --allow-private-media), media_fetch_failed, media_fetch_timeout, "
    "media_not_found, media_too_large, image_too_large, video_too_long, video_too_large, "
    "too_many_media_items, unsupported_modality, empty; otherwise null with `param` naming the "
    "field.",
    401: "Missing or wrong API key (`Authorization: Bearer <key>`; code invalid_api_key).",
    404: "Unknown model (code model_not_found; the message lists the served names).",
    413: "Too much in one request (code request_too_large: tokens over --max-request-tokens, or "
    "more than --request-timeout could finish); TEI answers its validation errors with 413.",
    422: "TEI: a field of the wrong type.",
    424: "TEI: the computation failed.",
    429: "The model's queue is full (Cohere and TEI shapes; `Retry-After` says when to retry).",
    500: "The device computation failed for this request alone (code engine_error).",
    503: "Queue full (code overloaded), draining (shutting_down) or a lost host; `Retry-After`.",
    504: "--request-timeout reached (code timeout); undispatched work was dropped.",
}


def _example(summary: str, value: dict, description: str = "") -> dict:
    out = {"summary": summary, "value": value}
    if description:
        out["description"] = description
    return out


def embedding_examples(model: str) -> dict:
    return {
        "text": _example("One text", {"model": model, "input": "The food was delicious."}),
        "base64": _example(
            "The openai client's default (base64)",
            {"model": model, "input": ["first text", "second text"], "encoding_format": "base64"},
            "The openai Python client asks for base64 (little-endian float32 bytes) and decodes it.",
        ),
        "query": _example(
            "Query prompt, matryoshka dimensions",
            {"model": model, "input": "what is jax?", "input_type": "query", "dimensions": 128},
        ),
        "token_ids": _example("Token ids", {"model": model, "input": [[101, 7592, 2088, 102]]}),
        "adapter": _example(
            "A LoRA adapter (`model:adapter`)",
            {"model": f"{model}:support", "input": "my order never arrived"},
            "Needs --lora NAME=DIR (or --lora-root); lora_path is the other spelling.",
        ),
        "priority": _example(
            "Bulk work behind interactive traffic",
            {"model": model, "input": ["doc one", "doc two"], "priority": 10, "truncate": True},
            "Lower priority values are served sooner (default 0).",
        ),
        "multimodal": _example(
            "Multimodal items (CLIP / SigLIP models)",
            {
                "model": "clip-vit-base-patch32",
                "input": [
                    {"text": "a photo of a cat"},
                    {"image": "https://example.com/cat.png"},
                    {"text": "a cat", "image": "data:image/png;base64,iVBORw0..."},
                ],
            },
            "One embedding per item; text and image of one item are fused.",
        ),
        "quantized": _example(
            "int8 / binary vectors",
            {"model": model, "input": "compact vectors", "embedding_type": "int8"},
        ),
        "messages": _example(
            "vLLM: chat messages",
            {"model": model, "messages": [{"role": "user", "content": "hello"}]},
            "Rendered by the model's chat template into one input.",
        ),
    }


EXAMPLES_BY_SCHEMA = {
    "TokenizeRequest": lambda m, r: {
        "texts": _example("Texts", {"model": m, "input": ["hello world", "a second text"]}),
        "prompt": _example("vLLM's form", {"model": m, "prompt": "hello world"}),
    },
    "DetokenizeRequest": lambda m, r: {
        "ids": _example("Token ids", {"model": m, "tokens": [101, 7592, 2088, 102]})
    },
    "TEIEmbedRequest": lambda m, r: {
        "inputs": _example("TEI", {"inputs": ["first text", "second text"], "truncate": True})
    },
    "TEIEmbedSparseRequest": lambda m, r: {
        "inputs": _example("TEI (a SPLADE model)", {"inputs": ["first text"], "sparse_top_k": 64})
    },
    "CohereEmbedRequest": lambda m, r: {
        "texts": _example(
            "Cohere",
            {
                "model": m,
                "texts": ["first text", "second text"],
                "input_type": "search_document",
                "embedding_types": ["float", "int8"],
            },
        )
    },
    "RerankRequest": lambda m, r: {
        "rerank": _example(
            "Cohere / Jina",
            {
                "model": r,
                "query": "what is jax?",
                "documents": ["JAX is a numerics library", {"text": "a soup recipe"}],
                "top_n": 1,
                "return_documents": True,
            },
        )
    },
    "TEIRerankRequest": lambda m, r: {
        "tei": _example("TEI", {"query": "what is jax?", "texts": ["JAX is fast", "soup"]})
    },
    "ScoreRequest": lambda m, r: {
        "one_to_many": _example(
            "One query against documents",
            {"model": r, "text_1": "what is jax?", "text_2": ["JAX is fast", "soup"]},
        ),
        "pairs": _example(
            "Pair by pair", {"model": r, "text_1": ["q1", "q2"], "text_2": ["d1", "d2"]}
        ),
    },
}
