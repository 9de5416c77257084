"""`save_pretrained`: a base with PEFT modules merged in, written as a Hugging Face checkpoint
(config.json + model.safetensors) that transformers loads, so a composed module can be served by any
Hugging Face-compatible stack. The names and transposes are the loading table's (`hf_names`), run backwards."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import safetensors.numpy

from peft_jax.fileio import atomic_write
from peft_jax.models import hf_config
from peft_jax.models.hf_names import TRANSPOSE
from peft_jax.models.spec import flatten
from peft_jax.peft.core import merge


def save_pretrained(directory, model, params, *, peft=None) -> None:
    """Writes `model` with `params` (and `peft`, a module or a list of modules, merged in order: LoRA,
    (IA)^3, sparse deltas) to `directory` as config.json + model.safetensors (float32)."""
    directory = os.fspath(directory)
    config = hf_config.to_hf(model.config)
    if peft is not None:
        params = merge(params, peft)
    flat = {k: np.asarray(jax.device_get(v), np.float32) for k, v in flatten(params).items()}
    tensors = {}
    for ours, names, transform in model.hf_param_names():
        tensors[names[0]] = np.ascontiguousarray(flat[ours].T if transform is TRANSPOSE else flat[ours])
    os.makedirs(directory, exist_ok=True)
    atomic_write(os.path.join(directory, "model.safetensors"),
                 lambda tmp: safetensors.numpy.save_file(tensors, tmp, metadata={"format": "pt"}), overwrite=True)
    atomic_write(os.path.join(directory, "config.json"), lambda tmp: _write_json(tmp, config), overwrite=True)


def _write_json(path: str, obj: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
