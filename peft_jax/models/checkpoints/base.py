"""Lazily read, named tensors from one checkpoint, whatever wrote it.

A format gives a `TensorSource`: the tensor names, and for each a `Lazy` tensor (shape, dtype, the file
it lives in) that reads only what is indexed, so a sharded load reads only each device's slice and a
transposed Linear weight is never copied whole.
"""

from __future__ import annotations

import json
from typing import Callable

import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy, which safetensors' numpy reader needs)
import numpy as np

from peft_jax.models.errors import CheckpointError

# The dtypes a weight may have in a file: floats only. Integer or 8-bit float tensors are quantized
# weights whose meaning depends on scales stored beside them; casting their bytes would be wrong.
FLOAT_DTYPES = {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16"}


class Lazy:
    """A tensor read on indexing: `lazy[idx]` reads that slice, `lazy.T` reverses the axes without reading."""

    def __init__(self, read: Callable[[tuple], np.ndarray], shape: tuple[int, ...], dtype: str, where: str,
                 perm: tuple[int, ...] | None = None):
        self._read, self.file_shape, self.dtype, self.where = read, tuple(shape), dtype, where
        self.perm = tuple(range(len(shape))) if perm is None else perm
        self.shape = tuple(self.file_shape[p] for p in self.perm)

    @property
    def T(self) -> "Lazy":
        return Lazy(self._read, self.file_shape, self.dtype, self.where, self.perm[::-1])

    def __getitem__(self, idx) -> np.ndarray:
        idx = idx if isinstance(idx, tuple) else (idx,)
        if any(i is Ellipsis for i in idx):
            i = idx.index(Ellipsis)
            idx = idx[:i] + (slice(None),) * (len(self.shape) - len(idx) + 1) + idx[i + 1:]
        idx = idx + (slice(None),) * (len(self.shape) - len(idx))
        file_idx = [slice(None)] * len(self.shape)
        for ours, axis in enumerate(self.perm):
            file_idx[axis] = idx[ours]
        return np.transpose(np.asarray(self._read(tuple(file_idx))), self.perm)

    def __array__(self, dtype=None, copy=None):
        out = self[...]
        return out if dtype is None else out.astype(dtype)


def in_memory(arr: np.ndarray, where: str) -> Lazy:
    """A `Lazy` over an array already read (formats that cannot be read piecewise)."""
    return Lazy(lambda idx: arr[idx], arr.shape, np.dtype(arr.dtype).name, where)


class TensorSource:
    """Named tensors of one checkpoint. Subclasses fill `self.tensors` ({name: Lazy}) and `self.path`."""

    path: str
    tensors: dict[str, Lazy]

    def names(self) -> list[str]:
        return list(self.tensors)

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def get(self, name: str) -> Lazy:
        """The tensor `name`, refused if it is not a float (named with its file and dtype)."""
        t = self.tensors[name]
        if t.dtype not in FLOAT_DTYPES:
            raise CheckpointError(f"{t.where}: tensor {name!r} has dtype {t.dtype}: quantized or integer weights "
                                  f"are not supported (expected one of {sorted(FLOAT_DTYPES)})")
        return t


def read_index(index: str) -> dict[str, str]:
    """{tensor name: shard file} of a sharded checkpoint's index (`weight_map`, as transformers writes it)."""
    try:
        with open(index, encoding="utf-8") as f:
            weight_map = json.load(f)["weight_map"]
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise TypeError("weight_map must map tensor names to file names")
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{index}: corrupt checkpoint index ({e!r})") from None
    return weight_map
