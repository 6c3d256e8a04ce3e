"""The serving core without HTTP: tokenisation, bucketing, compiled per-bucket runners, `Embedder`."""
