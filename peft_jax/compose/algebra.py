"""Composition strategies: weighted sums of PEFT modules with explicit semantics.

  combine(modules, weights, strategy="param", **options) -> PeftModule (a list of modules for "stack")
  combine_grid(modules, weights_grid [G, n], strategy, **options) -> batched PeftModule, row g = weights_grid[g]

What each strategy computes is the rule of the modules' family (`peft_jax.peft.families`), stated in
its file: LoRA (`families/lora.py`: param, negate_b, delta, concat, svd; the cross terms of the
paper's element-wise arithmetic), (IA)^3 (`ia3.py`: relative to the identity scale 1), prompts
(`prompt.py`: sum or concatenation), adapters (`adapter.py`), sparse deltas (`sparse.py`: over the
union of indices). `ties` and `dare` work on each family's task vectors (`peft_jax.compose.merging`).
`stack` returns the list [scaled(m_1, l_1), ...] for the model to apply together, in order (MAD-X for
adapters); scaling is exact per family (`Family.scaled_leaves`, relative to `Family.identity`), and
families may mix. "add" stands for the family's `add_means` ("param"; LoRA refuses it, since it
would hide the choice between param and delta).

Composition runs jitted: leaf-wise strategies (param, negate_b, ia3, adapters, prompts) are tree maps that
keep the inputs' sharding and move no data between devices; weights are traced arguments, so a new
weight never re-traces, and `combine_grid` vmaps one trace over a grid of weights. Refusals (see
`checks`) name the module and parameter path. Every result records its provenance in its metadata
under "composition": input fingerprints, weights, strategy, options, and the shared base fingerprint.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Mapping

import jax
import numpy as np

from peft_jax import tree as tu
from peft_jax.compose import checks, merging
from peft_jax.compose.checks import CompositionError
from peft_jax.peft import families
from peft_jax.peft.families.base import Plan
from peft_jax.peft.families.lora import dense_as_lora, lora_delta
from peft_jax.peft.module import PeftModule

__all__ = ["STRATEGIES", "Plan", "combine", "combine_grid", "dense_as_lora", "lora_delta"]


class _Strategies(Mapping):
    """{family name: the strategies it supports}, read from the registry (so registered families appear)."""

    def __getitem__(self, name: str) -> tuple[str, ...]:
        if name not in families.names():
            raise KeyError(name)
        return families.get(name).strategies

    def __iter__(self):
        return iter(families.names())

    def __len__(self) -> int:
        return len(families.names())

    def __repr__(self) -> str:
        return repr(dict(self))


STRATEGIES = _Strategies()

# Value ranges of the named options, whichever strategy or family declares them.
_OUT_OF_RANGE = {"density": lambda v: not 0.0 < v <= 1.0, "p": lambda v: not 0.0 <= v < 1.0,
                 "space": lambda v: v not in ("delta", "param"), "seed": lambda v: not isinstance(v, int),
                 "rank": lambda v: v is not None and (not isinstance(v, int) or v < 1)}


# ----------------------------------------------------------------------------- the jitted composition
def _run(params_list, w, extras, *, plan: Plan):
    """(composed params, aux) for one weight vector; aux holds what a kernel reports (SVD energies)."""
    kernel = families.get(plan.family).kernels.get(plan.strategy) or merging.KERNELS[plan.strategy]
    out = kernel(plan, params_list, w, extras)
    return out if isinstance(out, tuple) else (out, {})


_compose = jax.jit(_run, static_argnames="plan")


@functools.partial(jax.jit, static_argnames="plan")
def _compose_grid(params_list, weights_grid, extras, *, plan: Plan):
    return jax.vmap(lambda w: _run(params_list, w, extras, plan=plan))(weights_grid)


# ----------------------------------------------------------------------------- planning and checks
def _resolve_strategy(family: families.Family, strategy: str) -> str:
    if strategy == "add" and family.add_means:
        strategy = family.add_means
    if strategy not in family.strategies:
        extra = family.add_refusal if strategy == "add" else ""
        raise CompositionError(f"strategy {strategy!r} is not defined for {family.name} modules; "
                               f"choose one of {family.strategies}{extra}")
    return strategy


def _resolve_options(family: families.Family, strategy: str, options: dict) -> dict:
    """The strategy's options with defaults filled in; unknown names and bad values are refused."""
    defaults = {**merging.OPTIONS.get(strategy, {}), **family.strategy_options(strategy)}
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise CompositionError(f"unknown option(s) {unknown} for strategy {strategy!r} on {family.name} modules; "
                               f"accepted: {sorted(defaults) or 'none'}")
    opts = {**defaults, **options}
    for name, value in opts.items():
        if name in _OUT_OF_RANGE and _OUT_OF_RANGE[name](value):
            raise CompositionError(f"option {name}={value!r} is out of range for strategy {strategy!r} "
                                   "(density in (0, 1], p in [0, 1), space delta|param, integer seed, rank >= 1)")
    return opts


def _plan(modules: list[PeftModule], strategy: str, options: dict) -> tuple[Plan, dict]:
    """Checks that the modules compose under `strategy` and returns the static plan plus host-made extras."""
    family = families.get(modules[0].family)
    strategy = _resolve_strategy(family, strategy)
    opts = _resolve_options(family, strategy, options)
    paths = checks.check_structure(modules)
    plan = Plan(family.name, strategy, options=tuple(sorted(opts.items())))
    checks.check_shapes(modules, family.free_axes(plan), family.shape_hint(plan))
    facts = family.plan_facts(modules, plan, paths[0])
    plan = dataclasses.replace(plan, facts=tuple(sorted(facts.items())))
    return plan, family.composition_extras(modules, plan)


# ----------------------------------------------------------------------------- provenance
def _recorded_weights(weights):
    """The weights as given (float64 lists), or None when they are traced."""
    if not all(checks.is_concrete(x) for x in jax.tree.leaves(weights)):
        return None
    return np.asarray(jax.device_get(weights), np.float64).tolist()


def _provenance(modules, weights, strategy: str, options: dict, base: str | None) -> dict:
    """The 'composition' record: inputs (fingerprints), weights, strategy, options, base fingerprint."""
    concrete = all(checks.is_concrete(x) for m in modules for x in jax.tree.leaves(m.params))
    inputs = [checks.input_record(m) if concrete else {"fingerprint": None, "family": m.family} for m in modules]
    weights = _recorded_weights(weights)
    return {"strategy": strategy, "weights": weights, "options": options, "inputs": inputs,
            "base_fingerprint": base}


def _finish(modules, plan: Plan, params, aux, weights, base, batched: bool) -> PeftModule:
    family = families.get(plan.family)
    record = _provenance(modules, weights, plan.strategy, dict(plan.options), base)
    if aux and all(checks.is_concrete(x) for x in jax.tree.leaves(aux)):
        record.update(family.composition_report(plan, aux))
    meta = {"composition": record, **({"base_fingerprint": base} if base else {})}
    config = family.result_config(plan, [m.config for m in modules], params)
    return PeftModule(params=params, config=config, batched=batched, metadata_json=json.dumps(meta, sort_keys=True))


# ----------------------------------------------------------------------------- stacking
@functools.partial(jax.jit, static_argnames="family")
def _scaled(params: dict, lam: jax.Array, *, family: str) -> dict:
    """One module scaled by lam exactly, by its family's rule (`Family.scale_leaf`)."""
    fam = families.get(family)

    def scale(path, x):
        return fam.scale_leaf(x, lam) if tu.path_str(path).rsplit("/", 1)[-1] in fam.scaled_leaves else x
    return jax.tree_util.tree_map_with_path(scale, params)


def _stack(modules: list[PeftModule], w: jax.Array, weights, base: str | None, options: dict) -> list[PeftModule]:
    if options:
        raise CompositionError(f"strategy 'stack' takes no options, got {sorted(options)}")
    for i, m in enumerate(modules):
        if "stack" not in families.get(m.family).strategies:
            raise CompositionError(f"modules[{i}]: {m.family} modules do not support strategy 'stack'")
    out = []
    for i, m in enumerate(modules):
        record = {**_provenance(modules, weights, "stack", {}, base), "position": i}
        meta = {"composition": record, **({"base_fingerprint": base} if base else {})}
        out.append(PeftModule(params=_scaled(m.params, w[i], family=m.family), config=m.config,
                              metadata_json=json.dumps(meta, sort_keys=True)))
    return out


# ----------------------------------------------------------------------------- public API
def _checked(modules, weights, strategy: str, grid: bool):
    """Shared refusals: module list, weight count, one base, finite values."""
    modules = checks.check_modules(modules, mixed_families_ok=strategy == "stack" and not grid)
    w = checks.check_weights(weights, len(modules), grid=grid)
    base = checks.check_base(modules)
    checks.check_finite(modules)
    return modules, w, base


def combine(modules, weights, strategy: str = "param", **options) -> PeftModule | list[PeftModule]:
    """The weighted composition sum_i weights[i] * modules[i] under `strategy` (see the module docstring).

    Args:
      modules: PEFT modules of one family trained on one base (any families for "stack").
      weights: one float per module.
      strategy: one of `STRATEGIES[family]`. Built in: lora: param | negate_b | delta | concat | svd |
        ties | dare; ia3, adapter, sparse: param | ties | dare; prompt: param | concat; any: stack.
      **options: svd: rank; ties: density, space; dare: p, seed, space; exact LoRA strategies:
        allow_mixed_scaling (fold rsLoRA and plain scalings together).

    Returns:
      A module of the inputs' family with its provenance under metadata["composition"]; for "stack",
      the list of scaled modules to pass to the model together (`model.logits(..., peft=[...])`).

    Raises:
      CompositionError: modules or weights that cannot be composed; the message names module and path.
    """
    modules, w, base = _checked(modules, weights, strategy, grid=False)
    if strategy == "stack":
        return _stack(modules, w, weights, base, options)
    plan, extras = _plan(modules, strategy, options)
    params, aux = _compose([m.params for m in modules], w, extras, plan=plan)
    return _finish(modules, plan, params, aux, weights, base, batched=False)


def combine_grid(modules, weights_grid, strategy: str = "param", **options) -> PeftModule:
    """`combine` at every row of weights_grid [G, n] at once (one trace, vmapped over the rows).

    The result is a batched module: leaf g is the composition with weights_grid[g], so with G equal to
    the batch size it is used directly as per-example modules (`model.logits(params, batch, peft=grid)`);
    `peft.unbatch` splits it. Families without a batched form (sparse) and "stack" are refused.
    """
    modules, w, base = _checked(modules, weights_grid, strategy, grid=True)
    if strategy == "stack" or not families.get(modules[0].family).batchable:
        unbatchable = " or ".join(n for n in families.names() if not families.get(n).batchable)
        raise CompositionError(f"combine_grid cannot batch {unbatchable} modules or 'stack' results "
                               "(the models apply neither per example); call combine per weight instead")
    plan, extras = _plan(modules, strategy, options)
    params, aux = _compose_grid([m.params for m in modules], w, extras, plan=plan)
    return _finish(modules, plan, params, aux, weights_grid, base, batched=True)
