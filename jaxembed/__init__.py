"""jaxembed: text embeddings on JAX/XLA, from Hugging Face weights to an OpenAI-compatible server.

    from jaxembed import Embedder, Reranker

`Embedder` and `Reranker` load lazily, so `import jaxembed` stays cheap (no JAX) for the
processes that only need the version or the cards.
"""

__version__ = "0.1.0"
__all__ = ["Embedder", "Reranker", "__version__"]


def __getattr__(name: str):
    if name in ("Embedder", "Reranker"):
        from jaxembed import api

        return getattr(api, name)
    raise AttributeError(f"module 'jaxembed' has no attribute {name!r}")
