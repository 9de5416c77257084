"""Creating, counting, merging and fingerprinting PEFT modules.

`init` builds a module whose paths mirror the base parameters it touches; a
fresh module leaves the model's output unchanged (LoRA B = 0, (IA)^3 scales 1,
adapter up-projections 0, sparse values 0); prompts are the exception, since a
prompt changes the input by construction. What each family creates, how it folds
into the base and how its leaves are sharded is asked of its `families.Family`.
"""

from __future__ import annotations

import hashlib

import jax
import jax.numpy as jnp
import numpy as np

from peft_jax import tree as tu
from peft_jax.models import spec as spec_lib
from peft_jax.peft import families
from peft_jax.peft.errors import TargetError
from peft_jax.peft.module import PeftModule

__all__ = ["TargetError", "check_base", "count", "fingerprint", "init", "logical_axes", "merge", "unmerge"]


def init(model, config, rng: jax.Array, *, params: dict | None = None) -> PeftModule:
    """A fresh module of `config`'s family for `model` (params only needed for prompt init from the vocabulary)."""
    family = families.of_config(config)
    return PeftModule(params=family.init(model, config, rng, params), config=config)


def count(params: dict, peft: PeftModule | None = None) -> dict:
    """Total, trainable (PEFT) and fraction-trainable parameter counts."""
    base = int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))
    family = None if peft is None else families.get(peft.family)
    trainable = 0 if family is None else family.count_trainable(peft.params)
    total = base + (trainable if family is None or family.adds_parameters else 0)
    return {"total": total, "trainable": trainable, "fraction_trainable": trainable / max(total, 1)}


def fingerprint(params: dict) -> str:
    """A short hash of a base checkpoint: every leaf's path, shape, dtype and a strided sample of its values.

    Cheap (≤ 64 values per leaf leave the devices) and sensitive to the usual
    mistakes: another checkpoint, another size, another dtype.
    """
    h = hashlib.sha256()
    for path, leaf in sorted(tu.flatten(params).items()):
        h.update(f"{path}:{tuple(leaf.shape)}:{jnp.dtype(leaf.dtype).name};".encode())
        h.update(np.asarray(_sample(leaf), dtype=np.float32).tobytes())
    return h.hexdigest()[:16]


def _sample(leaf, n: int = 64):
    """≤ n evenly strided values of a leaf; for an array split across hosts, gathered replicated in a jit."""
    stride = max(1, int(np.prod(leaf.shape)) // n)
    take = lambda x: x.reshape(-1)[::stride][:n]
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
        replicated = jax.sharding.NamedSharding(leaf.sharding.mesh, jax.sharding.PartitionSpec())
        return jax.jit(take, out_shardings=replicated)(leaf)
    return take(leaf)


def check_base(params: dict, module: PeftModule) -> None:
    """Refuses a module trained on another base (fingerprint recorded in its metadata)."""
    want = module.base_fingerprint
    if want is None:
        return
    got = fingerprint(params)
    if got != want:
        raise TargetError(f"module was trained on base {want}, but these base params have fingerprint {got}: "
                          "a module must be applied to the checkpoint it was trained on")


def _modules(peft) -> list[PeftModule]:
    return [peft] if isinstance(peft, PeftModule) else list(peft)


def _fold(params: dict, module: PeftModule, sign: int) -> dict:
    """Merges (sign=+1) or un-merges (sign=-1) one module into a copy of `params`."""
    family = families.get(module.family)
    if not family.mergeable:
        raise ValueError(family.fold_refusal)
    if module.batched:
        raise ValueError("a batched (per-example) module cannot be merged into one set of weights")
    flat = tu.flatten(params)
    for path, node in family.nodes(module.params).items():
        key = family.base_leaf(path)
        if key not in flat:
            raise TargetError(f"module parameter {path} has no base leaf {key}")
        w = family.fold(flat[key].astype(jnp.float32), node, module.config, sign)
        flat[key] = w.astype(flat[key].dtype)
    return tu.unflatten(flat)


def merge(params: dict, peft) -> dict:
    """Base params with mergeable modules (LoRA, (IA)^3, sparse deltas) folded in, in order; the input is not
    modified."""
    for m in _modules(peft):
        check_base(params, m) if m.base_fingerprint else None
        params = _fold(params, m, +1)
    return params


def unmerge(params: dict, peft) -> dict:
    """Inverse of `merge` (up to float rounding)."""
    for m in reversed(_modules(peft)):
        params = _fold(params, m, -1)
    return params


def logical_axes(model, module: PeftModule) -> dict:
    """Logical axis names of each module leaf, derived from the base kernel at its site."""
    specs = spec_lib.flatten(model.param_specs())
    family = families.get(module.family)
    P = jax.sharding.PartitionSpec

    def axes(path, leaf):
        p = tu.path_str(path)
        parent, name = p.rsplit("/", 1) if "/" in p else ("", p)
        batch = ("batch",) if module.batched else ()
        named = family.leaf_axes(name, specs.get(parent + "/kernel"))
        if named is not None:
            return P(*batch, *named)
        return P(*batch, *([None] * (leaf.ndim - len(batch))))

    return jax.tree_util.tree_map_with_path(axes, module.params)
