"""Interchange with Hugging Face `peft`: adapter_config.json + adapter_model.safetensors.

The directory layout, the file checks and the module-name table are shared; the tensors and the
family's config fields come from the module's family (`Family.hf_export` / `hf_import`, found by
`peft_type` on import). LoRA is the family with a mapping today (its factors are transposed, see
`peft_jax.peft.families.lora`). Module names come from the model (`Model.hf_module_names`), the same
table that loads base checkpoints, so export and import cannot drift from loading.
"""

from __future__ import annotations

import json
import os

import numpy as np

from peft_jax.fileio import atomic_write, read_json_beside
from peft_jax.models import safetensors_io as st
from peft_jax.models.errors import CheckpointError
from peft_jax.peft import families
from peft_jax.peft.errors import HFPeftError
from peft_jax.peft.module import PeftModule

__all__ = ["HFPeftError", "export_hf", "import_hf"]


def _name_table(model) -> dict[str, str]:
    """{our module path: HF module name} for every kernel of `model`."""
    try:
        return model.hf_module_names()
    except CheckpointError as e:  # the architecture has no Hugging Face layout
        raise HFPeftError(str(e)) from None


def _family_of(peft: PeftModule) -> families.Family:
    """The module's family, refusing families without an HF peft mapping."""
    family = families.get(peft.family)
    if family.hf_peft_type is None:
        mapped = [name for name in families.names() if families.get(name).hf_peft_type]
        raise HFPeftError(f"only {', '.join(mapped)} modules export to HF peft, got {peft.family}")
    return family


def export_hf(path: str, peft: PeftModule, base_path: str, model, *, overwrite: bool = False) -> None:
    """Writes `peft` (LoRA) as an HF peft adapter directory loadable by `PeftModel.from_pretrained`."""
    family = _family_of(peft)
    if peft.batched:
        raise HFPeftError("a batched (per-example) module cannot be exported")
    tensors, fields = family.hf_export(peft, _name_table(model))
    config = {"peft_type": family.hf_peft_type, **fields, "inference_mode": True,
              "base_model_name_or_path": os.fspath(base_path),
              "task_type": model.HF_TASK_TYPE}
    os.makedirs(path, exist_ok=True)
    atomic_write(os.path.join(path, "adapter_model.safetensors"), lambda tmp: st.write(tmp, tensors), overwrite)
    atomic_write(os.path.join(path, "adapter_config.json"),
                 lambda tmp: open(tmp, "w").write(json.dumps(config, indent=2)), overwrite)


def import_hf(path: str, model) -> PeftModule:
    """Reads an HF peft adapter directory (LoRA) into a `PeftModule` for `model`."""
    cfg_path, w_path = os.path.join(path, "adapter_config.json"), os.path.join(path, "adapter_model.safetensors")
    cfg = read_json_beside(cfg_path, (w_path,), HFPeftError, "an HF peft adapter directory")
    by_type = {families.get(name).hf_peft_type: families.get(name) for name in families.names()}
    by_type.pop(None, None)
    if cfg.get("peft_type") not in by_type:
        raise HFPeftError(f"{cfg_path}: peft_type {cfg.get('peft_type')!r} is not supported "
                          f"({', '.join(by_type)} only)")
    reverse = {v: k for k, v in _name_table(model).items()}
    f = st.SafetensorsFile(w_path)
    tensors = {name: np.array(f.get(name)) for name in f.names}
    params, config = by_type[cfg["peft_type"]].hf_import(cfg, tensors, reverse, cfg_path, w_path)
    return PeftModule(params=params, config=config)
