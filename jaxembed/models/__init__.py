"""Flax model definitions: pure (params, arrays) → hidden states; nothing here loads files."""

from jaxembed.models.encoder import ENCODER_FAMILIES, Encoder, EncoderConfig

__all__ = ["ENCODER_FAMILIES", "Encoder", "EncoderConfig"]
