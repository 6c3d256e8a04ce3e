"""Checkpoint I/O: HF safetensors → Flax parameter pytrees, Orbax save/restore."""
