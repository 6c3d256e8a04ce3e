"""The serving core without HTTP, in hot-path order — each sub-package imports only those
before it: request → inputs → batching → device → workloads → model → service (the
synchronous facades, `Embedder` and `Reranker`, are jaxembed/api.py on top)."""
