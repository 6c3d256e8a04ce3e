"""Read safetensors files one tensor at a time, without torch.

The format is an 8-byte header length, a JSON header and raw little-endian
data. Reading it through `mmap` means a tensor is only paged in when it is
converted, so a multi-GB sharded checkpoint never sits in host memory twice.
Pickle-based `.bin` checkpoints are refused on purpose: loading them can run
arbitrary code.
"""

from __future__ import annotations

import json
import mmap
import struct
from collections.abc import Iterator
from pathlib import Path

import ml_dtypes
import numpy as np

from jaxembed.errors import ModelLoadError

_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
INDEX_FILENAME = "model.safetensors.index.json"
SINGLE_FILENAME = "model.safetensors"


class SafetensorsFile:
    """A memory-mapped safetensors file: `keys()`, `shape(key)`, `get(key)`."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self._file = path.open("rb")
            (header_len,) = struct.unpack("<Q", self._file.read(8))
            header = json.loads(self._file.read(header_len))
        except (OSError, struct.error, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ModelLoadError(f"{path.name} is not a readable safetensors file: {e}") from None
        header.pop("__metadata__", None)
        self._header: dict[str, dict] = header
        self._data_start = 8 + header_len
        self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)

    def keys(self) -> list[str]:
        return list(self._header)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._header[key]["shape"])

    def get(self, key: str) -> np.ndarray:
        """A read-only view of the tensor (no copy until the caller converts it)."""
        info = self._header[key]
        dtype = _DTYPES.get(info["dtype"])
        if dtype is None:
            raise ModelLoadError(
                f"{self.path.name}: tensor {key!r} has unsupported dtype {info['dtype']}"
            )
        begin, end = info["data_offsets"]
        buf = memoryview(self._map)[self._data_start + begin : self._data_start + end]
        return np.frombuffer(buf, dtype=dtype).reshape(info["shape"])

    def release(self, key: str) -> None:
        """Drop the tensor's pages from this process's memory once it has been copied out.

        Without this, every page read through the map stays resident, and a
        multi-GB conversion would hold the source next to the converted copy.
        """
        begin, end = self._header[key]["data_offsets"]
        start = (self._data_start + begin) // mmap.PAGESIZE * mmap.PAGESIZE
        length = self._data_start + end - start
        if length > 0 and hasattr(mmap, "MADV_DONTNEED"):
            self._map.madvise(mmap.MADV_DONTNEED, start, length)

    def close(self) -> None:
        # Views into the map may still be alive in the caller; let GC unmap it then.
        self._file.close()


class SafetensorsCheckpoint:
    """All tensors of a checkpoint directory, single-file or sharded with an index."""

    def __init__(self, model_dir: str | Path):
        model_dir = Path(model_dir)
        index = model_dir / INDEX_FILENAME
        self._files: dict[str, SafetensorsFile] = {}
        self._where: dict[str, SafetensorsFile] = {}
        self._inner: dict[str, str] = {}  # a module file's own name of a prefixed key
        if index.is_file():
            try:
                weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as e:
                raise ModelLoadError(f"{INDEX_FILENAME} is malformed: {e}") from None
            for key, filename in weight_map.items():
                shard = model_dir / filename
                if shard.resolve().parent != model_dir.resolve():
                    raise ModelLoadError(f"{INDEX_FILENAME} points outside the model directory")
                if filename not in self._files:
                    if not shard.is_file():
                        raise ModelLoadError(
                            f"shard {filename} named in {INDEX_FILENAME} is missing"
                        )
                    self._files[filename] = SafetensorsFile(shard)
                self._where[key] = self._files[filename]
        elif (model_dir / SINGLE_FILENAME).is_file():
            single = SafetensorsFile(model_dir / SINGLE_FILENAME)
            self._files[SINGLE_FILENAME] = single
            self._where = dict.fromkeys(single.keys(), single)
        else:
            pickled = sorted(p.name for p in model_dir.glob("*.bin"))
            hint = (
                f" (found {pickled}: pickle checkpoints are not loaded, convert them to safetensors)"
                if pickled
                else ""
            )
            raise ModelLoadError(f"no {SINGLE_FILENAME} or {INDEX_FILENAME} in {model_dir}{hint}")

    def add_module(self, module_dir: Path, prefix: str) -> None:
        """Also read a sentence-transformers module's own weights (e.g. `2_Dense/model.safetensors`),
        its tensors named `prefix` + their name (`2_Dense/linear.weight`)."""
        path = Path(module_dir) / SINGLE_FILENAME
        if not path.is_file():
            raise ModelLoadError(
                f"{module_dir.name} has no {SINGLE_FILENAME} (pickle weights are not loaded)"
            )
        module = SafetensorsFile(path)
        self._files[f"{prefix}{SINGLE_FILENAME}"] = module
        names = module.keys()
        for key in names:
            self._where[prefix + key] = module
            self._inner[prefix + key] = key

    def keys(self) -> list[str]:
        return list(self._where)

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __contains__(self, key: str) -> bool:
        return key in self._where

    def shape(self, key: str) -> tuple[int, ...]:
        return self._where[key].shape(self._inner.get(key, key))

    def get(self, key: str) -> np.ndarray:
        return self._where[key].get(self._inner.get(key, key))

    def release(self, key: str) -> None:
        self._where[key].release(self._inner.get(key, key))

    def close(self) -> None:
        for f in self._files.values():
            f.close()
