"""jaxembed: text embeddings on JAX/XLA, from Hugging Face weights to an OpenAI-compatible server."""

__version__ = "0.1.0"
