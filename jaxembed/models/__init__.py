"""Flax model definitions: pure (params, arrays) → hidden states; nothing here loads files."""

from jaxembed.models.decoder import DECODER_FAMILIES, Decoder, DecoderConfig
from jaxembed.models.encoder import ENCODER_FAMILIES, Encoder, EncoderConfig

__all__ = [
    "DECODER_FAMILIES",
    "ENCODER_FAMILIES",
    "Decoder",
    "DecoderConfig",
    "Encoder",
    "EncoderConfig",
]
