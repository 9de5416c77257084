"""Module files: one safetensors file holding a module's arrays, its config and metadata.

Layout: tensors named by their '/'-joined module path; `__metadata__` holds
`format` (name and version), `config` (JSON), `batched`, `metadata` (JSON: base
fingerprint, provenance) and `sha256` over the tensor bytes, so that a
truncated or corrupted file is detected. Writes are atomic (temporary file,
fsync, rename) and never replace an existing file unless asked to.
"""

from __future__ import annotations

import hashlib
import json
import os

import jax
import numpy as np

from peft_jax import tree as tu
from peft_jax.fileio import atomic_write  # also re-exported: peft_jax.peft.io.atomic_write
from peft_jax.models import safetensors_io as st
from peft_jax.peft.core import check_fit
from peft_jax.peft.errors import PeftConfigError
from peft_jax.peft.module import PeftModule, config_from_dict, config_to_dict

FORMAT = "peft_jax.module"
VERSION = 1


class ModuleFileError(ValueError):
    """A module file is missing, truncated, corrupted or of an unknown format version."""


def _digest(tensors: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(np.ascontiguousarray(tensors[name]).tobytes())
    return h.hexdigest()


def save(path: str, peft: PeftModule, metadata: dict | None = None, *, overwrite: bool = False) -> None:
    """Saves `peft` (arrays + config + metadata, with `metadata` merged into the module's own)."""
    if metadata:
        peft = peft.with_metadata(**metadata)
    tensors = {k: np.asarray(jax.device_get(v)) for k, v in tu.flatten(peft.params).items()}
    header = {"format": FORMAT, "version": str(VERSION), "config": json.dumps(config_to_dict(peft.config)),
              "batched": json.dumps(peft.batched), "metadata": peft.metadata_json, "sha256": _digest(tensors)}
    atomic_write(path, lambda tmp: st.write(tmp, tensors, header), overwrite=overwrite)


def load(path: str, base_params: dict | None = None) -> PeftModule:
    """Loads a module file; with `base_params`, also checks that it fits that base and was trained on it
    (`peft.check_fit`: a module without a base fingerprint gets an `UnverifiedBaseWarning`)."""
    path = os.fspath(path)
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "adapter_config.json")):
        raise ModuleFileError(f"{path}: is a Hugging Face peft adapter directory, not a peft_jax module file; "
                              "read it with peft.import_hf(path, model)")
    if os.path.isdir(path):
        raise ModuleFileError(f"{path}: is a directory; a module file is one .peft file written by peft.save")
    if not os.path.isfile(path):
        raise ModuleFileError(f"{path}: module file does not exist")
    try:
        f = st.SafetensorsFile(path)
    except st.SafetensorsError as e:
        raise ModuleFileError(str(e)) from None
    meta = f.metadata
    if meta.get("format") != FORMAT:
        raise ModuleFileError(f"{path}: not a peft_jax module file (format {meta.get('format')!r})")
    if meta.get("version") != str(VERSION):
        raise ModuleFileError(f"{path}: unknown module format version {meta.get('version')!r}; "
                              f"this peft_jax reads version {VERSION}")
    tensors = {name: np.array(f.get(name)) for name in f.names}
    if _digest(tensors) != meta.get("sha256"):
        raise ModuleFileError(f"{path}: checksum mismatch: the file is corrupted")
    try:
        config = config_from_dict(json.loads(meta["config"]))
    except (PeftConfigError, KeyError, json.JSONDecodeError) as e:
        raise ModuleFileError(f"{path}: bad module config ({e})") from None
    module = PeftModule(params=tu.unflatten({k: jax.numpy.asarray(v) for k, v in tensors.items()}), config=config,
                        batched=json.loads(meta.get("batched", "false")), metadata_json=meta.get("metadata", "{}"))
    if base_params is not None:
        check_fit(base_params, module)
    return module
