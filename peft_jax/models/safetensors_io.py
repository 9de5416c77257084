"""A small reader for safetensors files that memory-maps tensors and checks them.

It parses the header itself (8-byte little-endian length + JSON) so that a
truncated or corrupt file gets an error naming the file and the tensor, and so
that a tensor is read lazily from the memory map, one at a time (loading a
model never holds it twice), including bf16 (via ml_dtypes).
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any

import ml_dtypes
import numpy as np

DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}


class SafetensorsError(ValueError):
    """A safetensors file is unreadable, truncated or inconsistent."""


class SafetensorsFile:
    """Lazy view of one safetensors file: `names`, `shape(name)`, `get(name) -> np.ndarray` (memory-mapped)."""

    def __init__(self, path: str):
        self.path = path
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise SafetensorsError(f"{path}: truncated safetensors file ({size} bytes, no header)")
            (n,) = struct.unpack("<Q", raw)
            if n > size - 8:
                raise SafetensorsError(f"{path}: truncated safetensors file (header of {n} bytes, file {size} bytes)")
            try:
                header = json.loads(f.read(n))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise SafetensorsError(f"{path}: corrupt safetensors header ({e})") from None
        self.metadata = header.pop("__metadata__", {}) or {}
        self._entries: dict[str, Any] = header
        self._offset = 8 + n
        data_end = max((e["data_offsets"][1] for e in header.values()), default=0)
        if self._offset + data_end > size:
            raise SafetensorsError(
                f"{path}: truncated safetensors file: tensors need {self._offset + data_end} bytes, file has {size}")
        self._mmap = np.memmap(path, dtype=np.uint8, mode="r") if size else None

    @property
    def names(self) -> list[str]:
        return list(self._entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._entries[name]["shape"])

    def get(self, name: str) -> np.ndarray:
        e = self._entries[name]
        if e["dtype"] not in DTYPES:
            raise SafetensorsError(f"{self.path}: tensor {name!r} has unsupported dtype {e['dtype']}")
        start, end = e["data_offsets"]
        buf = self._mmap[self._offset + start:self._offset + end]
        return buf.view(DTYPES[e["dtype"]]).reshape(e["shape"])


def write(path: str, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    """Writes `tensors` as a safetensors file (used for HF peft export)."""
    names = {v: k for k, v in DTYPES.items()}
    header: dict[str, Any] = {"__metadata__": metadata or {}}
    offset, blobs = 0, []
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr)
        blob = arr.tobytes()
        header[name] = {"dtype": names[arr.dtype.type], "shape": list(arr.shape),
                        "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # alignment, as the reference writer does
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for blob in blobs:
            f.write(blob)
