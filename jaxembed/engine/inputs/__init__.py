"""Input preparation, per batch: tokenisation (batched across requests), prompts, chat
templates, pairs, windows. No JAX, so HTTP front-end processes prepare inputs themselves."""
