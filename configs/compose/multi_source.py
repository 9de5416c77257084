"""Multi-source: the mean of task modules of languages related to the target, plus its language module.

Run:
  python launch/compose.py --config=configs/compose/multi_source.py \
      --config.inputs.tasks=hindi=runs/task_hi.safetensors,marathi=runs/task_mr.safetensors \
      --config.inputs.lang=runs/lang_ne.safetensors --config.target=nepali --config.by=family \
      --config.output=runs/multi_ne.safetensors

`--config=configs/compose/multi_source.py:typology` ranks sources by typological distance (set --config.k).
"""

from ml_collections import config_dict

from peft_jax import distributed


def get_config(by: str | None = None) -> config_dict.ConfigDict:
    config = config_dict.ConfigDict()
    config.recipe = "multi_source"
    config.strategy = "param"  # see peft_jax.compose.algebra for every strategy's semantics
    config.target = ""  # the zero-shot target language (any code peft_jax.languages resolves)
    config.by = by or "family"  # family | genus | script | typology
    config.k = config_dict.placeholder(int)  # at most k sources (required for typology)
    config.source_weights = ""  # "" = mean of the sources, "similarity", or "hindi=0.7,marathi=0.3"
    config.lang_weight = 1.0  # weight of the target's language module, if given
    config.inputs = config_dict.ConfigDict({"tasks": "", "lang": ""})  # "language=path,..." and a module file
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
