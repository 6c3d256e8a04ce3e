"""A model's service: the input/output half (`EmbeddingService`, no JAX) over the device half
(`RowEngine`), multimodal fusion, calibration, scores and sparse encodings."""
