"""Composes saved PEFT modules as a config says, saves the result, prints a summary.

  python launch/compose.py --config=configs/compose/analogy.py \
      --config.inputs.task_src=runs/task_en.safetensors --config.inputs.lang_tgt=runs/lang_sw.safetensors \
      --config.inputs.lang_src=runs/lang_en.safetensors --config.output=runs/sum_sw.safetensors

Recipes (config.recipe) and the inputs they read (paths of module files written by `peft.save`):
  add, weighted   inputs.task, inputs.lang               (weighted: lam)
  analogy         inputs.task_src, inputs.lang_tgt, inputs.lang_src, lam
  multi_source    inputs.tasks = "hindi=path,marathi=path", optional inputs.lang; target, by, k,
                  source_weights ("" = mean, "similarity", or "hindi=0.7,marathi=0.3"), lang_weight
Options of the strategy (config.options.*) left at None keep the strategy's defaults. With config.base
set to a Hugging Face checkpoint directory, every input is checked against that base.
"""

from __future__ import annotations

import os
import sys

import jax
from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from peft_jax import cli, compose, distributed, peft  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Composition config (configs/compose/*.py).",
                                          lock_config=True)

INPUTS = {"add": ("task", "lang"), "weighted": ("task", "lang"), "analogy": ("task_src", "lang_tgt", "lang_src")}


def parse_pairs(text: str, what: str) -> dict[str, str]:
    """'a=x,b=y' -> {'a': 'x', 'b': 'y'}; a malformed item names itself."""
    out = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise cli.UsageError(f"{what}: expected 'name=value' items separated by commas, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def input_paths(config) -> dict[str, str]:
    """{input name: module file path} that the recipe needs; missing ones are clear errors."""
    if config.recipe == "multi_source":
        paths = {f"tasks.{k}": v for k, v in parse_pairs(config.inputs.tasks, "inputs.tasks").items()}
        if not paths:
            raise cli.UsageError("multi_source needs inputs.tasks = 'language=path,...'")
        return {**paths, **({"lang": config.inputs.lang} if config.inputs.get("lang") else {})}
    if config.recipe not in INPUTS:
        raise cli.UsageError(f"unknown recipe {config.recipe!r}; known: {sorted(INPUTS) + ['multi_source']}")
    missing = [name for name in INPUTS[config.recipe] if not config.inputs.get(name)]
    if missing:
        raise cli.UsageError(f"recipe {config.recipe!r} needs --config.inputs.{missing[0]}=PATH")
    return {name: config.inputs[name] for name in INPUTS[config.recipe]}


def load_inputs(config) -> dict:
    """Loads every input module (checked against config.base when it is set)."""
    base_params = None
    if config.get("base"):
        from peft_jax.models import load_pretrained
        _, base_params = load_pretrained(config.base)
    return {name: peft.load(path, base_params=base_params) for name, path in input_paths(config).items()}


def compose_modules(config, modules: dict):
    """Applies the config's recipe to the loaded modules."""
    opts = {k: v for k, v in config.options.to_dict().items() if v is not None}
    kw = dict(strategy=config.strategy, **opts)
    if config.recipe == "add":
        return compose.add(modules["task"], modules["lang"], **kw)
    if config.recipe == "weighted":
        return compose.weighted(modules["task"], modules["lang"], config.lam, **kw)
    if config.recipe == "analogy":
        return compose.analogy(modules["task_src"], modules["lang_tgt"], modules["lang_src"], config.lam, **kw)
    tasks = {k.split(".", 1)[1]: m for k, m in modules.items() if k.startswith("tasks.")}
    sw = config.source_weights
    weights = None if not sw else sw if sw == "similarity" else \
        {k: float(v) for k, v in parse_pairs(sw, "source_weights").items()}
    return compose.multi_source(tasks, config.target, by=config.by, k=config.k, lang_module=modules.get("lang"),
                                weights=weights, lang_weight=config.lang_weight, **kw)


def summary(config, modules: dict, result) -> str:
    """Human-readable account of the inputs, the weights and the composed module."""
    record = result.metadata["composition"]
    used = [r["fingerprint"] for r in record["inputs"]]
    lines = [f"recipe {config.recipe}, strategy {record['strategy']}, weights {record['weights']}"]
    for name, m in modules.items():
        fp = compose.module_fingerprint(m)
        note = f"weight {record['weights'][used.index(fp)]}" if fp in used else "not selected"
        lines.append(f"  input {name}: {m.family}, fingerprint {fp}, base {m.base_fingerprint}, {note}")
    if record.get("recipe", {}).get("sources"):
        lines.append(f"  sources {record['recipe']['sources']} for target {record['recipe']['target']}")
    size = sum(int(x.size) for x in jax.tree.leaves(result.params))
    lines.append(f"output {config.output}: {result.config}, {size} parameters, "
                 f"fingerprint {compose.module_fingerprint(result)}")
    if "svd" in record:
        lines.append(f"  svd rank {record['svd']['rank']}, dropped energy {record['svd']['dropped_energy']:.3g}")
    return "\n".join(lines)


def run(config) -> str:
    """Loads, composes, saves (refusing to replace a file unless config.overwrite) and returns the summary."""
    if not config.output:
        raise cli.UsageError("set --config.output=PATH for the composed module")
    modules = load_inputs(config)
    result = compose_modules(config, modules)
    peft.save(config.output, result, overwrite=config.overwrite)
    return summary(config, modules, result)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    config = _CONFIG.value
    sys.exit(cli.run(lambda: _print(distributed.run_on_process_zero(config.distributed, lambda: run(config)))))


def _print(text: str | None) -> None:
    if text is not None:  # None on the other processes of a multi-host run
        print(text)


if __name__ == "__main__":
    flags.mark_flag_as_required("config")
    app.run(main)
