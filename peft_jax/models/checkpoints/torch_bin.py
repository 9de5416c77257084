"""PyTorch `pytorch_model.bin` checkpoints (single or sharded by `pytorch_model.bin.index.json`), read
with `torch.load(weights_only=True, mmap=True)` when torch is installed; without it, an error that says
what to install (or to re-save the checkpoint as safetensors)."""

from __future__ import annotations

import importlib
import os

import ml_dtypes
import numpy as np

from peft_jax.models.checkpoints.base import TensorSource, in_memory, read_index
from peft_jax.models.errors import CheckpointError

INDEX, SINGLE = "pytorch_model.bin.index.json", "pytorch_model.bin"


def found(path: str) -> bool:
    return os.path.isfile(os.path.join(path, INDEX)) or os.path.isfile(os.path.join(path, SINGLE))


def _torch(fn: str):
    try:
        return importlib.import_module("torch")
    except ModuleNotFoundError:
        raise CheckpointError(f"{fn}: reading a PyTorch .bin checkpoint needs `torch`, which is not installed: "
                              'pip install torch (the CPU wheel is enough), or pip install "peft_jax[test]"; '
                              "or re-save the checkpoint as safetensors") from None


def _numpy(t) -> np.ndarray:
    """A torch tensor as numpy, bfloat16 kept (numpy has no bfloat16 of its own: reinterpret the bits)."""
    torch = importlib.import_module("torch")
    if t.dtype == torch.bfloat16:
        return t.contiguous().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


class TorchBinSource(TensorSource):
    """Every tensor of a directory's pytorch_model.bin file(s)."""

    def __init__(self, path: str):
        self.path = path
        self.tensors = {}
        index = os.path.join(path, INDEX)
        weight_map = read_index(index) if os.path.isfile(index) else {}
        for name in sorted(set(weight_map.values())) or [SINGLE]:
            self._add(os.path.join(path, name))
        lacking = sorted(set(weight_map) - set(self.tensors))
        if lacking:
            raise CheckpointError(f"{index} lists tensor {lacking[0]!r} in {weight_map[lacking[0]]}, which does not "
                                  "hold it")

    def _add(self, fn: str) -> None:
        if not os.path.isfile(fn):
            raise CheckpointError(f"{fn}: shard listed in the index is missing")
        torch = _torch(fn)
        try:
            state = torch.load(fn, map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:  # torch raises many types for a damaged file; name the file
            raise CheckpointError(f"{fn}: unreadable PyTorch checkpoint ({type(e).__name__}: {e})") from None
        if not isinstance(state, dict):
            raise CheckpointError(f"{fn}: not a PyTorch state dict")
        for name, t in state.items():
            if not isinstance(t, torch.Tensor):
                raise CheckpointError(f"{fn}: entry {name!r} is not a tensor")
            self.tensors[name] = in_memory(_numpy(t), fn)
