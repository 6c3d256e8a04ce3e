"""Untrusted bytes → decoded images and sampled video frames, within limits.

What a file *is* comes from its content, never from a name or a declared
type: Pillow identifies images by their magic bytes (and only the formats in
IMAGE_FORMATS are tried), FFmpeg (through PyAV) probes containers the same
way. Sizes are checked from headers before anything is decompressed, so a
small file that claims a huge image (a decompression bomb) is refused without
allocating it. Every failure is a `MediaError`, which the server answers with
a 400 naming the item.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import time
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from jaxembed.errors import MediaError

IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF")
_CORRUPT_VIDEO = "the video is corrupt or truncated"


@dataclasses.dataclass(frozen=True)
class MediaLimits:
    """Bounds on what one image or video may cost to decode."""

    max_image_pixels: int = 40_000_000  # width x height of an image (e.g. 8000 x 5000)
    max_video_seconds: float = 600.0
    max_video_frames: int = 20_000  # frames in the stream (all are decoded up to the last sampled)
    max_frame_pixels: int = 3840 * 2160
    # Wall time for decoding one video (a long 4K stream sampled near its end would
    # otherwise hold a decode worker for minutes).
    max_decode_seconds: float = 30.0


@contextlib.contextmanager
def _refusing_bad_data(message: str, code: str):
    """Any failure of a decoder on untrusted bytes is the input's fault: a MediaError."""
    try:
        yield
    except MediaError:
        raise
    except Exception:
        raise MediaError(message, code=code) from None


def decode_image(data: bytes, limits: MediaLimits) -> Image.Image:
    """An image from its bytes (first frame of an animation), fully decoded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except (UnidentifiedImageError, Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise MediaError(
            "the data is not a supported image (PNG, JPEG, GIF, WebP, BMP or TIFF) or its "
            "header claims an unreasonable size",
            code="invalid_image",
        ) from None
    except Exception:
        raise MediaError("the image header is corrupt", code="invalid_image") from None
    width, height = image.size
    if width * height > limits.max_image_pixels:
        raise MediaError(
            f"the image is {width}x{height} ({width * height} pixels); the limit is "
            f"{limits.max_image_pixels} pixels",
            code="image_too_large",
        )
    with _refusing_bad_data("the image data is corrupt or truncated", "invalid_image"):
        image.load()
    return image


def sample_frame_indices(total: int, count: int) -> list[int]:
    """`count` frame indices spread uniformly over `total` frames, first and last included.

    (`numpy.linspace(0, total - 1, count)` rounded; a video with fewer frames
    than asked gives every frame once.)
    """
    if total <= count:
        return list(range(total))
    return sorted(set(np.rint(np.linspace(0, total - 1, count)).astype(int).tolist()))


def _open_container(data: bytes):
    import av  # PyAV ships its own FFmpeg; imported here so text-only use never loads it

    with _refusing_bad_data(
        "the data is not a video in a container FFmpeg recognises", "invalid_video"
    ):
        return av.open(io.BytesIO(data), mode="r")


def decode_video(data: bytes, frames: int, limits: MediaLimits) -> list[Image.Image]:
    """`frames` frames sampled uniformly from the first video stream, as RGB images."""
    clip = probe_video(data, limits)
    return decode_frames(data, sample_frame_indices(clip.frames, frames), clip, limits)


@dataclasses.dataclass(frozen=True)
class VideoProbe:
    frames: int  # packets in the first video stream (what the sample is spread over)
    fps: float | None  # the stream's average frame rate, when the container says


def probe_video(data: bytes, limits: MediaLimits) -> VideoProbe:
    """The first video stream's frame count and rate, from its packets (nothing decoded),
    under the size, duration and frame-count limits."""
    with _open_container(data) as container:
        demuxer = container.format.name
        if demuxer == "image2" or demuxer.endswith("_pipe"):  # stills read as 1-frame videos
            raise MediaError(
                "the data is a still image, not a video: send it as an image",
                code="invalid_video",
            )
        if not container.streams.video:
            raise MediaError("the file has no video stream", code="invalid_video")
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        if width * height > limits.max_frame_pixels:
            raise MediaError(
                f"video frames are {width}x{height}; the limit is {limits.max_frame_pixels} pixels",
                code="video_too_large",
            )
        seconds = _duration_seconds(container, stream)
        if seconds is not None and seconds > limits.max_video_seconds:
            raise MediaError(
                f"the video lasts {seconds:.1f} s; the limit is {limits.max_video_seconds:g} s",
                code="video_too_long",
            )
        rate = float(stream.average_rate) if stream.average_rate else None
        total = 0
        with _refusing_bad_data(_CORRUPT_VIDEO, "invalid_video"):
            for packet in container.demux(stream):
                if packet.size:
                    total += 1
                    if total > limits.max_video_frames:
                        raise MediaError(
                            f"the video has more than {limits.max_video_frames} frames",
                            code="video_too_long",
                        )
    if total == 0:
        raise MediaError("the video has no frames", code="invalid_video")
    return VideoProbe(total, rate)


def decode_frames(
    data: bytes, indices: list[int], probe: VideoProbe, limits: MediaLimits
) -> list[Image.Image]:
    """The frames at `indices` (sorted, distinct) as RGB images, decoding up to the last one.

    A stream that yields fewer frames than its probe announced is truncated or corrupt, and
    refused rather than embedded from a partial read.
    """
    wanted = set(indices)
    kept: list[Image.Image] = []
    deadline = time.monotonic() + limits.max_decode_seconds
    with _open_container(data) as container, _refusing_bad_data(_CORRUPT_VIDEO, "invalid_video"):
        for index, frame in enumerate(container.decode(video=0)):
            if index in wanted:
                kept.append(frame.to_image())
            if len(kept) == len(wanted):
                break
            if time.monotonic() > deadline:
                raise MediaError(
                    f"decoding the video took longer than {limits.max_decode_seconds:g} s",
                    code="video_too_long",
                )
    if len(kept) < len(wanted):
        raise MediaError(
            f"the video is truncated or corrupt: {probe.frames} frames announced, fewer decodable",
            code="invalid_video",
        )
    return kept


def _duration_seconds(container, stream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000  # AV_TIME_BASE
    return None
