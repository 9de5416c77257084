"""Weighted sum: lam * task + (1 - lam) * lang (with --config.recipe=add: task + lang).

Run:
  python launch/compose.py --config=configs/compose/weighted.py \
      --config.inputs.task=runs/task_en.safetensors --config.inputs.lang=runs/lang_sw.safetensors \
      --config.lam=0.7 --config.output=runs/weighted_sw.safetensors

`--config=configs/compose/weighted.py:concat` sets the strategy (param by default).
"""

from ml_collections import config_dict

from peft_jax import distributed


def get_config(strategy: str | None = None) -> config_dict.ConfigDict:
    config = config_dict.ConfigDict()
    config.recipe = "weighted"  # or "add" (both weights 1)
    config.strategy = strategy or "param"  # see peft_jax.compose.algebra for every strategy's semantics
    config.lam = 0.5  # weight of the task module; the language module gets 1 - lam
    config.inputs = config_dict.ConfigDict({"task": "", "lang": ""})  # module files
    # Strategy options; None keeps the strategy's default (svd: rank; ties: density, space; dare: p, seed, space).
    config.options = config_dict.ConfigDict({
        "rank": config_dict.placeholder(int), "density": config_dict.placeholder(float),
        "p": config_dict.placeholder(float), "seed": config_dict.placeholder(int),
        "space": config_dict.placeholder(str), "allow_mixed_scaling": config_dict.placeholder(bool)})
    config.base = ""  # optional Hugging Face checkpoint dir: inputs must have been trained on it
    config.output = ""  # where the composed module is saved
    config.overwrite = False  # replace an existing output file
    config.distributed = distributed.section()  # multi-host: process 0 composes, the others wait
    return config
