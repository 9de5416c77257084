"""Native base checkpoints: our model config (JSON) + parameters (safetensors, '/'-joined paths).

Used for bases this project trains itself (the embedded demo pretrains a tiny
mT5-style model); Hugging Face checkpoints load through `hf.load_pretrained`.
The directory may be local or remote (`gs://...`, through `etils.epath`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from peft_jax import tree as tu
from peft_jax.fileio import atomic_write, local_path, read_json_beside, write_text
from peft_jax.models import registry
from peft_jax.models import safetensors_io as st
from peft_jax.models import spec
from peft_jax.models.errors import CheckpointError


def save(path: str, model, params: dict) -> None:
    """Writes `path/config.json` and `path/params.safetensors` (atomically, each file)."""
    path = os.fspath(path)
    tensors = {k: np.asarray(jax.device_get(v)) for k, v in tu.flatten(params).items()}
    digest = hashlib.sha256(b"".join(tensors[k].tobytes() for k in sorted(tensors))).hexdigest()
    config = {"kind": type(model.config).__name__, "config": dataclasses.asdict(model.config)}
    atomic_write(os.path.join(path, "params.safetensors"),
                 lambda tmp: st.write(tmp, tensors, {"sha256": digest}), overwrite=True)
    write_text(os.path.join(path, "config.json"), json.dumps(config, indent=1))


def is_native(path: str) -> bool:
    return epath.Path(os.fspath(path), "params.safetensors").is_file()


def load(path: str):
    """(model, params) from a directory written by `save`; checksums are verified."""
    cfg_path, w_path = os.path.join(path, "config.json"), os.path.join(path, "params.safetensors")
    meta = read_json_beside(cfg_path, (w_path,), CheckpointError, "a peft_jax native checkpoint")
    model_cls = registry.class_for_config_name(meta.get("kind"))
    if model_cls is None:
        raise CheckpointError(f"{cfg_path}: unknown model kind {meta.get('kind')!r}")
    model = model_cls(model_cls.CONFIG_CLASS(**meta["config"]))
    with local_path(w_path) as local:  # a remote file is read whole through a local copy
        try:
            f = st.SafetensorsFile(local)
            tensors, saved_digest = {k: np.array(f.get(k)) for k in f.names}, f.metadata.get("sha256")
        except st.SafetensorsError as e:
            raise CheckpointError(str(e).replace(local, w_path)) from None
    digest = hashlib.sha256(b"".join(tensors[k].tobytes() for k in sorted(tensors))).hexdigest()
    if digest != saved_digest:
        raise CheckpointError(f"{w_path}: checksum mismatch: the file is corrupted")
    want = set(spec.flatten(model.param_specs()))
    if want != set(tensors):
        raise CheckpointError(f"{w_path}: parameters differ from the config: missing {sorted(want - set(tensors))[:5]},"
                              f" unexpected {sorted(set(tensors) - want)[:5]}")
    return model, tu.unflatten({k: jnp.asarray(v) for k, v in tensors.items()})
