"""Module files: one safetensors file holding a module's arrays, its config and metadata.

Layout: tensors named by their '/'-joined module path; `__metadata__` holds
`format` (name and version), `config` (JSON), `batched`, `metadata` (JSON: base
fingerprint, provenance) and `sha256` over the tensor bytes, so that a
truncated or corrupted file is detected. Writes are atomic (temporary file,
fsync, rename; one whole-object upload on `gs://`) and never replace an
existing file unless asked to. Local and remote paths load alike.
"""

from __future__ import annotations

import hashlib
import json
import os

import jax
import numpy as np
from etils import epath

from peft_jax import tree as tu
from peft_jax.fileio import atomic_write, local_path  # atomic_write: also peft_jax.peft.io.atomic_write
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
    """Loads a module file, local or remote (`gs://...`, read whole through a local copy); with
    `base_params`, also checks that it fits that base and was trained on it (`peft.check_fit`: a module
    without a base fingerprint gets an `UnverifiedBaseWarning`)."""
    path = os.fspath(path)
    where = epath.Path(path)
    if where.is_dir() and (where / "adapter_config.json").is_file():
        raise ModuleFileError(f"{path}: is a Hugging Face peft adapter directory, not a peft_jax module file; "
                              "read it with peft.import_hf(path, model)")
    if where.is_dir():
        raise ModuleFileError(f"{path}: is a directory; a module file is one .peft file written by peft.save")
    if not where.is_file():
        raise ModuleFileError(f"{path}: module file does not exist")
    with local_path(path) as local:
        try:
            f = st.SafetensorsFile(local)
            meta = f.metadata
            tensors = {name: np.array(f.get(name)) for name in f.names}
        except st.SafetensorsError as e:
            raise ModuleFileError(str(e).replace(local, path)) from None
    module = _module(path, meta, tensors)
    if base_params is not None:
        check_fit(base_params, module)
    return module


def _module(path: str, meta: dict[str, str], tensors: dict[str, np.ndarray]) -> PeftModule:
    """The module of a file's header `meta` and `tensors`, its format, version and checksum checked."""
    if meta.get("format") != FORMAT:
        raise ModuleFileError(f"{path}: not a peft_jax module file (format {meta.get('format')!r})")
    if meta.get("version") != str(VERSION):
        raise ModuleFileError(f"{path}: unknown module format version {meta.get('version')!r}; "
                              f"this peft_jax reads version {VERSION}")
    if _digest(tensors) != meta.get("sha256"):
        raise ModuleFileError(f"{path}: checksum mismatch: the file is corrupted")
    try:
        config = config_from_dict(json.loads(meta["config"]))
    except (PeftConfigError, KeyError, json.JSONDecodeError) as e:
        raise ModuleFileError(f"{path}: bad module config ({e})") from None
    return PeftModule(params=tu.unflatten({k: jax.numpy.asarray(v) for k, v in tensors.items()}), config=config,
                      batched=json.loads(meta.get("batched", "false")), metadata_json=meta.get("metadata", "{}"))
