"""`ServiceConfig`: one model's service settings, read by both halves (the input half in any
process, the device half where the devices are). No JAX."""

from __future__ import annotations

import dataclasses

from jaxembed.engine.request.limits import QueueLimits
from jaxembed.media import MediaLimits


@dataclasses.dataclass(frozen=True)
class ServiceConfig:
    queue: QueueLimits = dataclasses.field(default_factory=QueueLimits)
    cache_bytes: int = 0  # embedding cache (0: off)
    max_request_tokens: int | None = None  # tokens of one job's texts (None: no limit)
    max_media_items: int = 64  # images + videos per job
    # What decoding one image or video may cost (jaxembed/media.py).
    max_image_pixels: int = MediaLimits.max_image_pixels
    max_video_seconds: float = MediaLimits.max_video_seconds
    max_video_frames: int = MediaLimits.max_video_frames
    max_decode_seconds: float = MediaLimits.max_decode_seconds
    decode_workers: int = 4
    quantization_ranges: str | None = None  # int8/uint8 ranges file (default: calibrated)

    @property
    def media_limits(self) -> MediaLimits:
        return MediaLimits(
            max_image_pixels=self.max_image_pixels,
            max_video_seconds=self.max_video_seconds,
            max_video_frames=self.max_video_frames,
            max_decode_seconds=self.max_decode_seconds,
        )
