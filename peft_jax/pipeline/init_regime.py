"""The initialisation regime of a run's modules, and what it does to `param` composition.

With `shared_init=True` every module stage starts from the same seed, so all LoRA modules share their
initial A matrices; if A barely moves during training, sum_i l_i B_i A (param arithmetic) is close to
the exact sum_i l_i B_i A_i whenever the weights sum to 1, while `add` (weights summing to 2) scales
the shared A by about 2. With `shared_init=False` each module stage gets its own seed (derived from the
run seed and the stage name) and param arithmetic mixes unrelated A matrices. Two measurements make
the regime visible in every report:

  a_drift        per module: the cosine of each LoRA A to its initial value (1.0: A did not move)
  param_gap      per recipe: ||ΔW_param - ΔW_exact|| / ||ΔW_exact|| over all adapted kernels, where
                 ΔW_exact is the `delta` strategy's exact weighted sum of the modules' ΔW
"""

from __future__ import annotations

import zlib

import jax
import jax.numpy as jnp
import numpy as np

from peft_jax import compose, peft
from peft_jax.tree import flatten


def module_seed(run_seed: int, kind: str, lang: str, shared_init: bool) -> int:
    """The training seed of module `kind/lang`: the run's seed, or one derived from it and the stage name."""
    if shared_init:
        return int(run_seed)
    return zlib.crc32(f"{int(run_seed)}/{kind}/{lang}".encode()) & 0x7FFFFFFF


def _cosine(a: jax.Array, b: jax.Array) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    norm = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / norm) if norm else float("nan")


def a_drift(model, module: peft.PeftModule, seed: int) -> dict | None:
    """{"mean", "min"} cosine of the module's LoRA A matrices to their initial values (None: not LoRA).

    The initial module is re-created from the seed the module was trained with (initialisation is a
    pure function of model, config and seed).
    """
    if module.family != "lora":
        return None
    initial = flatten(peft.init(model, module.config, jax.random.PRNGKey(seed)).params)
    final = flatten(module.params)
    cosines = [_cosine(final[k], initial[k]) for k in final if k.endswith("lora_a")]
    return {"mean": float(np.mean(cosines)), "min": float(np.min(cosines))}


def _adapted_delta(params: dict, module: peft.PeftModule) -> dict:
    """{parameter path: merged - base}; kernels the module does not adapt give zeros."""
    merged, base = flatten(peft.merge(params, module)), flatten(params)
    return {k: merged[k].astype(jnp.float32) - base[k].astype(jnp.float32) for k in base}


def param_gap(params: dict, modules: list[peft.PeftModule], weights: list[float]) -> float | None:
    """||ΔW_param - ΔW_exact|| / ||ΔW_exact|| of one weighted composition (None: not LoRA)."""
    if modules[0].family != "lora":
        return None
    approx = _adapted_delta(params, compose.combine(modules, weights, "param"))
    exact = _adapted_delta(params, compose.combine(modules, weights, "delta"))
    num = sum(float(jnp.sum((approx[k] - exact[k]) ** 2)) for k in exact)
    den = sum(float(jnp.sum(exact[k] ** 2)) for k in exact)
    return float(np.sqrt(num / den)) if den else float("nan")


def report(config, model, params, modules: dict, seeds: dict) -> dict:
    """{"shared_init", "modules": {name: {seed, a_cos_mean, a_cos_min}}, "param_gap": {recipe/target: gap}}."""
    out = {"shared_init": bool(config.shared_init), "modules": {}, "param_gap": {}}
    for name, module in modules.items():
        drift = a_drift(model, module, seeds[name])
        out["modules"][name] = {"seed": seeds[name], **({} if drift is None else
                                                        {"a_cos_mean": drift["mean"], "a_cos_min": drift["min"]})}
    src = config.source_language
    for target in config.target_languages:
        task, lang_t, lang_s = modules[f"task/{src}"], modules.get(f"lang/{target}"), modules.get(f"lang/{src}")
        if lang_t is None or task.family != "lora":
            continue
        out["param_gap"][f"add/{target}"] = param_gap(params, [task, lang_t], [1.0, 1.0])
        out["param_gap"][f"weighted_0.5/{target}"] = param_gap(params, [task, lang_t], [0.5, 0.5])
        if lang_s is not None:
            out["param_gap"][f"analogy_1/{target}"] = param_gap(params, [task, lang_t, lang_s], [1.0, 1.0, -1.0])
    return out


def markdown(rep: dict) -> str:
    """A results.md section: the regime, A's drift per module and the param-vs-exact gap per composition."""
    lines = [f"\n## Module initialisation (shared_init={rep['shared_init']})\n",
             "cos(A, A₀): cosine of each LoRA A to its initial value (mean, min over kernels). "
             "param gap: ‖ΔW_param − ΔW_exact‖ / ‖ΔW_exact‖ of the composition.\n",
             "| module | seed | cos(A, A₀) mean | min |", "|---|---|---|---|"]
    for name, m in rep["modules"].items():
        mean, low = (f"{m[k]:.3f}" if k in m else "" for k in ("a_cos_mean", "a_cos_min"))
        lines.append(f"| {name} | {m['seed']} | {mean} | {low} |")
    if rep["param_gap"]:
        lines += ["", "| composition | param gap |", "|---|---|"]
        lines += [f"| {k} | {v:.3f} |" for k, v in rep["param_gap"].items()]
    return "\n".join(lines) + "\n"
