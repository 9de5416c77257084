"""Creating, counting, merging and fingerprinting PEFT modules.

`init` builds a module whose paths mirror the base parameters it touches; a
fresh module leaves the model's output unchanged (LoRA B = 0, (IA)^3 scales 1,
adapter up-projections 0, sparse values 0); prompts are the exception, since a
prompt changes the input by construction. What each family creates, how it folds
into the base and how its leaves are sharded is asked of its `families.Family`.
"""

from __future__ import annotations

import hashlib
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from peft_jax import tree as tu
from peft_jax.models import spec as spec_lib
from peft_jax.peft import families
from peft_jax.peft.errors import PeftConfigError, TargetError
from peft_jax.peft.families import sites
from peft_jax.peft.module import PeftModule

__all__ = ["TargetError", "UnverifiedBaseWarning", "check_base", "check_fit", "count", "fingerprint", "fold_leaf",
           "init", "logical_axes", "merge", "unmerge"]


def init(base, config, rng: jax.Array, *, params: dict | None = None) -> PeftModule:
    """A fresh module of `config`'s family for `base`: a peft_jax model, or any parameter pytree (nested
    dicts, `FrozenDict`, `nnx.State`) whose '/'-joined paths the config's targets select (LoRA, (IA)^3,
    sparse deltas). `params` is only needed for prompt init from the vocabulary."""
    family = families.of_config(config)
    if not sites.is_model(base) and not family.from_tree:
        raise PeftConfigError(f"{family.name} modules are created from a peft_jax model (they change the computation "
                              f"at places a parameter tree does not name), got a {type(base).__name__}")
    return PeftModule(params=family.init(base, config, rng, params), config=config)


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
    for path, leaf in sorted(sites.tree_leaves(params).items()):
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


class UnverifiedBaseWarning(UserWarning):
    """A module without a recorded base fingerprint met a base: only its paths and shapes could be checked."""


def check_base(params: dict, module: PeftModule) -> None:
    """Refuses a module trained on another base (fingerprint recorded in its metadata)."""
    want = module.base_fingerprint
    if want is None:
        return
    got = fingerprint(params)
    if got != want:
        raise TargetError(f"module was trained on base {want}, but these base params have fingerprint {got}: "
                          "a module must be applied to the checkpoint it was trained on")


def module_list(peft) -> list[PeftModule]:
    """`peft` (None, one module or a sequence of modules) as a list."""
    if peft is None:
        return []
    return [peft] if isinstance(peft, PeftModule) else list(peft)


def _concrete(params) -> bool:
    return all(families.base.is_concrete(x) for x in jax.tree.leaves(params))


def check_fit(params, peft, *, fingerprints: bool = True) -> None:
    """Refuses modules that do not fit the base `params`: every site a module holds must exist in the base
    with the shape the module expects (a `TargetError` naming the module, the path, expected and got).

    The one check between a module and its base: models run it when a call starts (`Scope.root`, so every
    entry point: logits, generate, score, evaluation, training), `peft.merge`, `peft.load(base_params=...)`
    and `peft_jax.flax` too. It reads shapes only, so it also runs inside jit. With concrete params and
    `fingerprints`, a module that records its base fingerprint is compared with these params
    (`check_base`), and a module without one gets an `UnverifiedBaseWarning` (it may come from another
    checkpoint of the same shapes).
    """
    shapes = {p: tuple(np.shape(x)) for p, x in sites.tree_leaves(params).items()}
    for i, m in enumerate(module_list(peft)):
        if not isinstance(m, PeftModule):
            raise TypeError(f"peft must be a peft_jax Module or a sequence of them, got {type(m).__name__}")
        family = families.get(m.family)
        for path, node in family.nodes(m.params).items():
            problem = family.fit(path, node, shapes, m.config)
            if problem:
                name = "module" if isinstance(peft, PeftModule) else f"modules[{i}]"
                raise TargetError(f"{name} ({m.family}) does not fit this base at {path}: {problem}")
        if fingerprints and _concrete(params):
            if m.base_fingerprint:
                check_base(params, m)
            else:
                warnings.warn(f"a {m.family} module without a base fingerprint: its paths and shapes fit this base, "
                              "but it may come from another checkpoint (peft.save(..., {'base_fingerprint': "
                              "peft.fingerprint(params)}) records one)", UnverifiedBaseWarning, stacklevel=2)


def fold_leaf(w: jax.Array, path: str, node: dict, module: PeftModule, sign: int) -> jax.Array:
    """The base leaf `w` under the node at `path` with the node merged in (sign=+1) or taken out (-1), in w's
    dtype; kernel_view families see an N-D kernel as its matrix [inputs, outputs] (`sites.Matrix`)."""
    family = families.get(module.family)
    w32 = w.astype(jnp.float32)
    if family.kernel_view and w.ndim != 2:
        rows = family.matrix_shape(node, int(np.prod(w.shape)))[0]
        matrix = sites.Matrix.of(path, w.shape, module.config, rows=rows)
        return matrix.from2d(family.fold(matrix.to2d(w32), node, module.config, sign)).astype(w.dtype)
    return family.fold(w32, node, module.config, sign).astype(w.dtype)


def _fold(params, module: PeftModule, sign: int):
    """Merges (sign=+1) or un-merges (sign=-1) one module into a copy of `params` (any pytree: nested dicts,
    FrozenDict, nnx.State keep their type)."""
    family = families.get(module.family)
    if not family.mergeable:
        raise ValueError(family.fold_refusal)
    if module.batched:
        raise ValueError("a batched (per-example) module cannot be merged into one set of weights")
    check_fit(params, module, fingerprints=False)
    by_leaf = {family.base_leaf(path): (path, node) for path, node in family.nodes(module.params).items()}

    def one(key_path, w):
        hit = by_leaf.get(sites.tree_path(key_path))
        return w if hit is None else fold_leaf(w, hit[0], hit[1], module, sign)

    return jax.tree_util.tree_map_with_path(one, params)


def merge(params, peft):
    """Base params with mergeable modules (LoRA, (IA)^3, sparse deltas) folded in, in order; the input is not
    modified and keeps its pytree type."""
    for m in module_list(peft):
        check_base(params, m) if m.base_fingerprint else None
        params = _fold(params, m, +1)
    return params


def unmerge(params, peft):
    """Inverse of `merge` (up to float rounding)."""
    for m in reversed(module_list(peft)):
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
