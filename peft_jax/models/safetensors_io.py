"""A small reader and writer for safetensors files, and the header check every safetensors read starts with.

`read_header` parses the header itself (8-byte little-endian length + JSON) and checks every entry
against its shape, dtype and the file size, so a truncated or corrupt file gets an error naming the
file and the tensor. Module files and native checkpoints read through `SafetensorsFile` (memory-mapped,
one tensor at a time, bf16 via ml_dtypes); Hugging Face checkpoints through the `safetensors` library
after the same check (`models/checkpoints/hf_safetensors.py`).
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


# Bytes per element of every dtype a safetensors header may name (those we cannot read included, so a
# header is checked whole before any dtype is refused).
ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4,
            "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


def read_header(path: str) -> tuple[dict[str, Any], dict[str, str], int]:
    """(tensor entries, metadata, offset of the data) of a safetensors file, every entry checked against
    its shape, dtype and the file size, so a bad file is named with the tensor at fault."""
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
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path}: corrupt safetensors header (not a JSON object)")
    metadata = header.pop("__metadata__", {}) or {}
    for name, e in header.items():
        try:
            (start, end), shape, dtype = e["data_offsets"], e["shape"], e["dtype"]
            want = int(np.prod(shape, dtype=np.int64)) * ITEMSIZE[dtype]
        except (KeyError, TypeError, ValueError):
            raise SafetensorsError(f"{path}: corrupt safetensors header entry for tensor {name!r}: {e!r}") from None
        if end - start != want:
            raise SafetensorsError(f"{path}: tensor {name!r} of shape {tuple(shape)} and dtype {dtype} needs {want} "
                                   f"bytes, but its header offsets [{start}, {end}] give {end - start}")
    data_end = max((e["data_offsets"][1] for e in header.values()), default=0)
    if 8 + n + data_end > size:
        raise SafetensorsError(f"{path}: truncated safetensors file: tensors need {8 + n + data_end} bytes, "
                               f"file has {size}")
    return header, metadata, 8 + n


class SafetensorsFile:
    """Lazy view of one safetensors file: `names`, `shape(name)`, `get(name) -> np.ndarray` (memory-mapped)."""

    def __init__(self, path: str):
        self.path = path
        self._entries, self.metadata, self._offset = read_header(path)
        self._mmap = np.memmap(path, dtype=np.uint8, mode="r") if os.path.getsize(path) else None

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
