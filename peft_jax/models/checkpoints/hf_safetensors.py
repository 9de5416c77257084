"""Hugging Face safetensors checkpoints: `model.safetensors`, or shards listed by
`model.safetensors.index.json`, read with the `safetensors` library (`safe_open`, `get_slice`).

Each file's header is checked first (`safetensors_io.read_header`), so a truncated file or an entry whose
offsets do not fit its shape is named with the file and the tensor; the index must agree with its shards.
"""

from __future__ import annotations

import os

from safetensors import SafetensorError, safe_open

from peft_jax.models.checkpoints.base import Lazy, TensorSource, read_index
from peft_jax.models.errors import CheckpointError
from peft_jax.models.safetensors_io import SafetensorsError, read_header

INDEX, SINGLE = "model.safetensors.index.json", "model.safetensors"
# safetensors dtype names -> numpy names (others stay as written, and are refused when read).
NUMPY_NAMES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16"}


def found(path: str) -> bool:
    return os.path.isfile(os.path.join(path, INDEX)) or os.path.isfile(os.path.join(path, SINGLE))


class SafetensorsSource(TensorSource):
    """Every tensor of a checkpoint directory's safetensors file(s)."""

    def __init__(self, path: str):
        self.path = path
        self.tensors = {}
        index = os.path.join(path, INDEX)
        if os.path.isfile(index):
            shards: dict[str, set[str]] = {}
            for name, fn in read_index(index).items():
                shards.setdefault(fn, set()).add(name)
            for fn, names in shards.items():
                self._add(os.path.join(path, fn), names, index)
        else:
            self._add(os.path.join(path, SINGLE), None, None)

    def _add(self, fn: str, listed: set[str] | None, index: str | None) -> None:
        if not os.path.isfile(fn):
            raise CheckpointError(f"{fn}: shard listed in {index} is missing")
        try:
            header, _, _ = read_header(fn)
            handle = safe_open(fn, framework="np")
        except (SafetensorsError, SafetensorError) as e:
            raise CheckpointError(str(e) if isinstance(e, SafetensorsError) else f"{fn}: {e}") from None
        names = set(header)
        if listed is not None:
            lacking = sorted(listed - names)
            if lacking:
                raise CheckpointError(f"{index} lists tensor {lacking[0]!r} in {os.path.basename(fn)}, which does not "
                                      f"hold it" + (f" ({len(lacking)} such tensors)" if len(lacking) > 1 else ""))
        for name in names:  # a tensor a shard holds beyond its index is loaded too: unused, it fails the load
            e = header[name]
            read = lambda idx, n=name: handle.get_slice(n)[idx]
            self.tensors[name] = Lazy(read, e["shape"], NUMPY_NAMES.get(e["dtype"], e["dtype"]), fn)
