"""LoRA interchange with Hugging Face `peft`: adapter_config.json + adapter_model.safetensors.

Our LoRA factors are `A: [in, r]`, `B: [r, out]` on kernels `[in, out]`; peft's
are `lora_A.weight: [r, in]`, `lora_B.weight: [out, r]` on torch Linear
`[out, in]`, so both are transposed. Module names come from the same table that
loads base checkpoints (`peft_jax.models.hf`), so export and import cannot drift
from loading.
"""

from __future__ import annotations

import json
import os

import jax.numpy as jnp
import numpy as np

from peft_jax import tree as tu
from peft_jax.models import safetensors_io as st
from peft_jax.peft.io import atomic_write
from peft_jax.peft.module import LoraConfig, Module


class HFPeftError(ValueError):
    """An adapter cannot be exported to, or imported from, the HF peft format."""


def _name_table(model) -> dict[str, str]:
    """{our module path: HF module name} for every kernel of `model`."""
    from peft_jax.models import hf  # models import this package: resolve lazily

    if model.family == "decoder_only":
        if model.config.block != "sequential":
            raise HFPeftError("only sequential-block (Llama/Gemma layout) decoders have a Hugging Face counterpart")
        names = hf.decoder_names(model.config)
    else:
        names = hf.t5_names(model.config)
    return {ours[: -len("/kernel")]: cands[0][: -len(".weight")] for ours, cands, _ in names if ours.endswith("/kernel")}


def export_hf(path: str, peft: Module, base_path: str, model, *, overwrite: bool = False) -> None:
    """Writes `peft` (LoRA) as an HF peft adapter directory loadable by `PeftModel.from_pretrained`."""
    if peft.family != "lora":
        raise HFPeftError(f"only LoRA modules export to HF peft, got {peft.family}")
    if peft.batched:
        raise HFPeftError("a batched (per-example) module cannot be exported")
    table = _name_table(model)
    flat = tu.flatten(peft.params, is_leaf=lambda x: isinstance(x, dict) and "lora_a" in x)
    tensors, targets = {}, []
    for ours, node in flat.items():
        if ours not in table:
            raise HFPeftError(f"LoRA on {ours} has no Hugging Face module name")
        name = table[ours]
        targets.append(name)
        tensors[f"base_model.model.{name}.lora_A.weight"] = np.asarray(node["lora_a"], np.float32).T.copy()
        tensors[f"base_model.model.{name}.lora_B.weight"] = np.asarray(node["lora_b"], np.float32).T.copy()
    c = peft.config
    config = {"peft_type": "LORA", "r": c.rank, "lora_alpha": c.alpha, "use_rslora": c.rslora,
              "lora_dropout": c.dropout, "target_modules": sorted(targets), "bias": "none",
              "fan_in_fan_out": False, "inference_mode": True, "base_model_name_or_path": os.fspath(base_path),
              "task_type": "CAUSAL_LM" if model.family == "decoder_only" else "SEQ_2_SEQ_LM"}
    os.makedirs(path, exist_ok=True)
    atomic_write(os.path.join(path, "adapter_model.safetensors"), lambda tmp: st.write(tmp, tensors), overwrite)
    atomic_write(os.path.join(path, "adapter_config.json"),
                 lambda tmp: open(tmp, "w").write(json.dumps(config, indent=2)), overwrite)


def import_hf(path: str, model) -> Module:
    """Reads an HF peft LoRA adapter directory into a LoRA `Module` for `model`."""
    cfg_path, w_path = os.path.join(path, "adapter_config.json"), os.path.join(path, "adapter_model.safetensors")
    for p in (cfg_path, w_path):
        if not os.path.isfile(p):
            raise HFPeftError(f"{p}: missing (expected an HF peft adapter directory)")
    with open(cfg_path, encoding="utf-8") as f:
        cfg = json.load(f)
    if cfg.get("peft_type") != "LORA":
        raise HFPeftError(f"{cfg_path}: peft_type {cfg.get('peft_type')!r} is not supported (LORA only)")
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern") or cfg.get("bias", "none") != "none":
        raise HFPeftError(f"{cfg_path}: rank_pattern / alpha_pattern / LoRA biases are not supported")
    reverse = {v: k for k, v in _name_table(model).items()}
    f = st.SafetensorsFile(w_path)
    flat = {}
    for name in f.names:
        module_name, kind = name.removeprefix("base_model.model.").rsplit(".lora_", 1)
        module_name = module_name.replace(".default", "")
        if module_name not in reverse:
            raise HFPeftError(f"{w_path}: tensor {name!r} targets {module_name}, which this model does not have")
        key = "lora_a" if kind.startswith("A") else "lora_b"
        flat[f"{reverse[module_name]}/{key}"] = jnp.asarray(np.array(f.get(name), np.float32).T)
    paths = sorted({k.rsplit("/", 1)[0] for k in flat})
    targets = "|".join(p.replace("/", "/") for p in paths)
    config = LoraConfig(targets=f"({targets})", rank=int(cfg["r"]), alpha=float(cfg["lora_alpha"]),
                        rslora=bool(cfg.get("use_rslora", False)), dropout=float(cfg.get("lora_dropout", 0.0)))
    return Module(params=tu.unflatten(flat), config=config)
