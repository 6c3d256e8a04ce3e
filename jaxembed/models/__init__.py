"""Flax model definitions: pure (params, arrays) → hidden states; nothing here loads files."""

from jaxembed.model_types import DECODER_FAMILIES
from jaxembed.models.decoder import Decoder, DecoderConfig
from jaxembed.models.encoder import ENCODER_FAMILIES, Encoder, EncoderConfig

__all__ = [
    "DECODER_FAMILIES",
    "ENCODER_FAMILIES",
    "Decoder",
    "DecoderConfig",
    "Encoder",
    "EncoderConfig",
]
