"""`flax_model.msgpack` checkpoints of transformers' Flax models, read with `flax.serialization`.

The nested dict (`shared/embedding`, `encoder/block/0/layer/0/SelfAttention/q/kernel`, ...) is
presented under the PyTorch names the name tables use: '/' -> '.', a `kernel` [in, out] becomes the
`weight` [out, in] it was converted from, an `embedding` the embedding's `weight`.
"""

from __future__ import annotations

import os

import numpy as np
from flax import serialization

from peft_jax.models.checkpoints.base import TensorSource, in_memory
from peft_jax.models.errors import CheckpointError
from peft_jax.tree import flatten

SINGLE = "flax_model.msgpack"


def found(path: str) -> bool:
    return os.path.isfile(os.path.join(path, SINGLE))


def torch_name(path: str) -> tuple[str, bool]:
    """(PyTorch name, transposed?) of a Flax parameter path."""
    *module, leaf = path.split("/")
    if leaf == "kernel":
        return ".".join(module + ["weight"]), True
    return ".".join(module + ["weight" if leaf in ("embedding", "scale") else leaf]), False


class FlaxMsgpackSource(TensorSource):
    """Every parameter of a directory's flax_model.msgpack, under its PyTorch name."""

    def __init__(self, path: str):
        self.path = path
        fn = os.path.join(path, SINGLE)
        try:
            with open(fn, "rb") as f:
                tree = serialization.msgpack_restore(f.read())
        except Exception as e:  # msgpack raises several types for damaged bytes; name the file
            raise CheckpointError(f"{fn}: unreadable Flax msgpack checkpoint ({type(e).__name__}: {e})") from None
        if isinstance(tree, dict) and set(tree) == {"params"}:
            tree = tree["params"]
        if not isinstance(tree, dict):
            raise CheckpointError(f"{fn}: not a Flax parameter tree")
        self.tensors = {}
        for flax_path, arr in flatten(tree).items():
            if not isinstance(arr, np.ndarray):
                raise CheckpointError(f"{fn}: entry {flax_path!r} is not an array")
            name, transposed = torch_name(flax_path)
            if name in self.tensors:
                raise CheckpointError(f"{fn}: two entries map to {name!r}")
            lazy = in_memory(arr, f"{fn} ({flax_path})")
            self.tensors[name] = lazy.T if transposed else lazy
