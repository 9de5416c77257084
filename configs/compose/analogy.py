"""Analogy: task_src + lam * (lang_tgt - lang_src), "summarize in tgt" from "summarize in src".

Run:
  python launch/compose.py --config=configs/compose/analogy.py \
      --config.inputs.task_src=runs/task_en.safetensors --config.inputs.lang_tgt=runs/lang_sw.safetensors \
      --config.inputs.lang_src=runs/lang_en.safetensors --config.lam=0.5 --config.output=runs/sum_sw.safetensors

`--config=configs/compose/analogy.py:delta` sets the strategy (param, the paper's arithmetic, by default;
delta / concat subtract exactly).
"""

from ml_collections import config_dict

from peft_jax import distributed


def get_config(strategy: str | None = None) -> config_dict.ConfigDict:
    config = config_dict.ConfigDict()
    config.recipe = "analogy"
    config.strategy = strategy or "param"  # see peft_jax.compose.algebra for every strategy's semantics
    config.lam = 1.0  # weight of (lang_tgt - lang_src)
    config.inputs = config_dict.ConfigDict({"task_src": "", "lang_tgt": "", "lang_src": ""})  # module files
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
