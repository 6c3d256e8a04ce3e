"""Per-model int8/uint8 calibration: the ranges each dimension is quantized over.

Computed once per model from `jaxembed.quantization.calibration_texts()` (embedded by the
model's own service, at low priority) and cached in `$JAXEMBED_HOME/calibration/` keyed
by the model directory, card, dtype and corpus version — a model directory may be
read-only, the cache never is. An operator's ranges file replaces the computation. With
`dimensions`, ranges come from the calibration vectors truncated (and renormalised) the
same way, so a reduced vector is quantized over its own distribution.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np

from jaxembed.quantization import (
    CALIBRATION_SIZE,
    CALIBRATION_VERSION,
    calibration_texts,
    ranges_of,
    read_ranges,
)
from jaxembed.registry import home_dir
from jaxembed.vectors import truncate_dimensions

log = logging.getLogger(__name__)

# texts → their full-width float32 vectors (the service's own pipeline).
EmbedTexts = Callable[[list[str]], Awaitable[np.ndarray]]


class Calibration:
    def __init__(
        self,
        key_parts: tuple[str, ...],
        dimensions: int,
        normalize: bool,
        ranges_file: str | None = None,
    ):
        self.dimensions = dimensions
        self.normalize = normalize
        self.ranges_file = ranges_file
        digest = hashlib.blake2b(
            "\0".join((*key_parts, CALIBRATION_VERSION)).encode(), digest_size=12
        )
        self.cache_path = home_dir() / "calibration" / f"{digest.hexdigest()}.npy"
        self._vectors: np.ndarray | None = None
        self._fixed: np.ndarray | None = None
        self._by_width: dict[int, np.ndarray] = {}
        self._lock = asyncio.Lock()
        if ranges_file is not None:
            self._fixed = read_ranges(ranges_file, dimensions)

    @property
    def source(self) -> str:
        if self.ranges_file is not None:
            return f"ranges file {Path(self.ranges_file).name}"
        return f"{CALIBRATION_VERSION} ({CALIBRATION_SIZE} generated sentences)"

    def full_ranges(self) -> np.ndarray | None:
        """[2, D] at the model's full width, if known yet (for /v1/models)."""
        if self._fixed is not None:
            return self._fixed
        return None if self._vectors is None else self.ranges(self.dimensions)

    def ranges(self, width: int) -> np.ndarray:
        """Ranges for vectors reduced to `width` (after `ensure`)."""
        if self._fixed is not None:
            return self._fixed[:, :width]
        if width not in self._by_width:
            reduced = truncate_dimensions(self._vectors, width, self.normalize)
            self._by_width[width] = ranges_of(reduced)
        return self._by_width[width]

    async def ensure(self, embed_texts: EmbedTexts) -> None:
        """Load or compute the calibration vectors (once; concurrent callers wait)."""
        if self._fixed is not None or self._vectors is not None:
            return
        async with self._lock:
            if self._vectors is not None:
                return
            if self.cache_path.exists():
                self._vectors = np.load(self.cache_path, allow_pickle=False)
                return
            log.info("computing int8 calibration ranges (%d texts) ...", CALIBRATION_SIZE)
            vectors = await embed_texts(calibration_texts())
            try:
                self.cache_path.parent.mkdir(parents=True, exist_ok=True)
                np.save(self.cache_path, vectors)
            except OSError as e:  # a read-only home only costs a recomputation next time
                log.warning("cannot cache calibration vectors at %s: %s", self.cache_path, e)
            self._vectors = vectors
