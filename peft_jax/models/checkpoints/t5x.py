"""t5x checkpoints: the legacy format (a msgpack `checkpoint` whose parameters are inline arrays or
TensorStore specs of zarr arrays beside it) and the Orbax one (`state/`, OCDBT), read through
tensorstore and orbax. Parameters live under `optimizer/target` (legacy) or `target` (Orbax) with
t5x's names, which are ours; only the relative-position tables are stored [heads, buckets].

A t5x checkpoint holds no model description: `load_pretrained(path, model=...)` takes one. The path
may be a `checkpoint_<step>` directory or the directory holding them (the highest step is read).
"""

from __future__ import annotations

import os
import re

import numpy as np
from flax import serialization

from peft_jax.models.checkpoints.base import TensorSource, in_memory
from peft_jax.models.errors import CheckpointError
from peft_jax.tree import flatten

LEGACY, ORBAX = "checkpoint", "state"
RELPOS = "relpos_bias/rel_embedding"  # t5x: [heads, buckets]; ours: [buckets, heads]


def step_dir(path: str) -> str | None:
    """The checkpoint directory: `path` itself, or its highest `checkpoint_<step>` subdirectory."""
    if _is_step(path):
        return path
    steps = [(int(m.group(1)), d) for d in os.listdir(path) if (m := re.fullmatch(r"checkpoint_(\d+)", d))
             and _is_step(os.path.join(path, d))] if os.path.isdir(path) else []
    return os.path.join(path, max(steps)[1]) if steps else None


def _is_step(path: str) -> bool:
    return os.path.isfile(os.path.join(path, LEGACY)) or os.path.isdir(os.path.join(path, ORBAX))


def _is_spec(x) -> bool:
    return isinstance(x, dict) and "driver" in x and "kvstore" in x


def _read_spec(spec: dict, ckpt: str, name: str) -> np.ndarray:
    """A zarr array a legacy checkpoint points to, found beside the msgpack whatever its kvstore says
    (released checkpoints name a GCS bucket; the arrays are the sibling directories)."""
    rel = spec["kvstore"].get("path", "").rstrip("/").rsplit("/", 1)[-1]
    import tensorstore  # noqa: PLC0415  (0.5 s to import; only legacy t5x checkpoints need it)

    local = dict(spec, kvstore={"driver": "file", "path": os.path.join(ckpt, rel) + "/"})
    try:
        return np.asarray(tensorstore.open(local, read=True).result().read().result())
    except Exception as e:  # tensorstore reports missing or damaged arrays as ValueError / RuntimeError
        raise CheckpointError(f"{os.path.join(ckpt, rel)}: unreadable TensorStore array for parameter {name!r} "
                              f"({type(e).__name__}: {e})") from None


class T5xSource(TensorSource):
    """The parameters (`target`) of a t5x checkpoint, under our names; optimizer state is not read."""

    def __init__(self, path: str):
        self.path = step_dir(path)
        if self.path is None:
            raise CheckpointError(f"{path}: no t5x checkpoint (a 'checkpoint' msgpack or an Orbax 'state/')")
        legacy = os.path.join(self.path, LEGACY)
        target = self._legacy(legacy) if os.path.isfile(legacy) else self._orbax(os.path.join(self.path, ORBAX))
        where = legacy if os.path.isfile(legacy) else os.path.join(self.path, ORBAX)
        self.tensors = {}
        for name, leaf in flatten(target, is_leaf=_is_spec).items():
            arr = _read_spec(leaf, self.path, name) if _is_spec(leaf) else np.asarray(leaf)
            lazy = in_memory(arr, f"{where} ({name})")
            self.tensors[name] = lazy.T if name.endswith(RELPOS) and arr.ndim == 2 else lazy

    @staticmethod
    def _legacy(fn: str) -> dict:
        try:
            with open(fn, "rb") as f:
                ckpt = serialization.msgpack_restore(f.read())
            return ckpt["optimizer"]["target"]
        except (KeyError, TypeError) as e:
            raise CheckpointError(f"{fn}: not a t5x checkpoint (no optimizer/target: {e!r})") from None
        except Exception as e:  # damaged msgpack
            raise CheckpointError(f"{fn}: unreadable t5x checkpoint ({type(e).__name__}: {e})") from None

    @staticmethod
    def _orbax(state: str) -> dict:
        import orbax.checkpoint as ocp  # noqa: PLC0415  (heavy; only t5x Orbax checkpoints need it)

        try:
            restored = ocp.PyTreeCheckpointer().restore(os.path.abspath(state))
            return restored["target"]
        except (KeyError, TypeError) as e:
            raise CheckpointError(f"{state}: not a t5x Orbax checkpoint (no target: {e!r})") from None
        except Exception as e:
            raise CheckpointError(f"{state}: unreadable Orbax checkpoint ({type(e).__name__}: {e})") from None
