"""PEFT modules as pytrees separate from the frozen base.

  module = peft.init(model, peft.LoraConfig(rank=8), rng)
  logits = model.logits(params, batch, peft=module)          # or peft=[lang, task] to stack
  merged = peft.merge(params, module)                          # LoRA, (IA)^3, sparse
  peft.save(path, module, {"note": "..."}); module = peft.load(path, base_params=params)
  peft.count(params, module) -> {total, trainable, fraction_trainable}
  peft.export_hf(dir, module, base_path, model); peft.import_hf(dir, model)
  peft.batch([m1, m2, ...]) -> one module whose row b applies to example b
  peft.check_fit(params, module)                               # every site exists with the module's shape
  peft.init(params_tree, config, rng)                          # any pytree: dict, FrozenDict, nnx.State

A module is a `PeftModule` (`Module` is its former name); what each method does lives in its family
file under `peft_jax.peft.families`, found through the registry (`families.get`, `families.register`).
"""

from peft_jax.peft.errors import HFPeftError, PeftConfigError, TargetError
from peft_jax.peft import families
from peft_jax.peft.module import (AdapterConfig, IA3Config, LoraConfig, Module, PeftModule, PromptConfig,
                                  SparseConfig, config_from_dict, config_to_dict)
from peft_jax.peft.core import (UnverifiedBaseWarning, check_base, check_fit, count, fingerprint, init, logical_axes,
                                merge, unmerge)
from peft_jax.peft.io import ModuleFileError, load, save
from peft_jax.peft.hf_peft import export_hf, import_hf
from peft_jax.peft.batching import batch, unbatch
