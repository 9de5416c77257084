"""LoRA parameters made by qwix (`qwix.LoraProvider` / `qwix.apply_lora_to_model`) as peft_jax LoRA modules.

    lora_model = qwix.apply_lora_to_model(model, qwix.LoraProvider(module_path=".*", rank=4, alpha=8.0))
    variables = lora_model.init(key, x)                       # linen: params hold kernel_lora_a / _b
    module, base = peft_jax.flax.qwix.from_qwix(variables["params"], alpha=8.0)
    logits = peft_jax.flax.apply(model, {"params": base}, x, peft=module)   # the original model
    params = peft_jax.flax.qwix.to_qwix(module, variables["params"], alpha=8.0)  # back, in qwix's layout

For NNX, pass `nnx.state(lora_model, nnx.Param)` (LoRA params are `nnx.LoRAParam`, a `Param`, so the
kernels come along) and use the original model with `nnx_modules`; `to_qwix(module, nnx.state(lora_model,
nnx.Param), alpha)` gives a state for `nnx.update(lora_model, ...)`.

qwix stores, next to a layer's weight `kernel`, the leaves `kernel_lora_a` and `kernel_lora_b`, and adds
(alpha / rank) x A B; alpha and rank live in the `LoraRule`, not in the parameters. Two layouts:

- matmul layers (`Dense`, `DenseGeneral`, `nnx.Linear`, `nnx.LinearGeneral`, through `dot_general`):
  A [prod(inputs), r], B [r, prod(outputs)], the kernel's leading axes being its inputs; this is our
  [in, r] / [r, out] layout as is.
- `Einsum` layers: A [kernel's contracted axes..., r], B [r, kernel's other axes...], each in the kernel's
  axis order; the update is the kernel-shaped contraction of A and B over r, i.e. our matrix view
  (`sites.Matrix`) with those input axes, so A and B reshape to our factors; an axis the kernel shares
  with the input and the output (per-head weights) is an input axis of that view, exactly. Which kernel
  axes are the inputs is read from the factor shapes; where they cannot tell, `in_axes` (as in
  `LoraConfig`) says. (qwix 0.1.8 applies LoRA to NNX `Einsum` layers; on linen `Einsum` it fails.)

Nothing here imports qwix: the conversion reads and writes parameter trees only.
"""

from __future__ import annotations

import itertools
import math
import numbers
import re
from typing import Any, Sequence

import jax
import numpy as np

from peft_jax import tree as tu
from peft_jax.peft.errors import PeftConfigError, TargetError
from peft_jax.peft.families import lora, sites
from peft_jax.peft.module import PeftModule

__all__ = ["from_qwix", "to_qwix"]

_SUFFIX = {"_lora_a": "lora_a", "_lora_b": "lora_b"}


def _qwix_factors(leaves: dict) -> dict[str, dict]:
    """{site: {"weight": name, "lora_a": A, "lora_b": B}} of qwix's LoRA leaves among `leaves` ({path: array})."""
    out: dict[str, dict] = {}
    for path, x in leaves.items():
        site, _, name = path.rpartition("/")
        for suffix, key in _SUFFIX.items():
            if name.endswith(suffix):
                node = out.setdefault(site, {})
                node.setdefault("weight", name[: -len(suffix)])
                if node["weight"] != name[: -len(suffix)]:
                    raise TargetError(f"{site}: qwix LoRA on two weights ({node['weight']}, {name[:-len(suffix)]}); "
                                      "a peft_jax LoRA node attaches to one kernel per layer")
                node[key] = x
    for site, node in out.items():
        missing = sorted({"lora_a", "lora_b"} - set(node))
        if missing:
            raise TargetError(f"{site}: qwix LoRA leaf {site}/{node['weight']}_{missing[0]} is missing")
    return out


def _leading(shape, a, b) -> tuple[int, ...] | None:
    """The leading input axes of a matmul layer whose flattened factors are A [rows, r], B [r, cols]."""
    for k in range(1, len(shape)):
        if math.prod(shape[:k]) == a.shape[0] and math.prod(shape[k:]) == b.shape[1]:
            return tuple(range(k))
    return None


def _einsum_axes(shape, a, b) -> list[tuple[int, ...]]:
    """Every split of the kernel axes into inputs (A's leading axes) and outputs (B's trailing ones), in order."""
    n_in, nd = a.ndim - 1, len(shape)
    hits = []
    for axes in itertools.combinations(range(nd), n_in):
        rest = tuple(i for i in range(nd) if i not in axes)
        if tuple(shape[i] for i in axes) == a.shape[:-1] and tuple(shape[i] for i in rest) == b.shape[1:]:
            hits.append(axes)
    return hits


def _given_axes(site: str, shape, in_axes) -> tuple[int, ...] | None:
    """The input axes `in_axes` ((regex, axes), ...) gives the kernel at `site`, or None."""
    if not any(re.fullmatch(pattern, site) for pattern, _ in in_axes):
        return None
    return sites.Matrix.of(site, shape, lora.LoraConfig(in_axes=tuple(in_axes))).in_axes


def _input_axes(site: str, shape, a, b, in_axes) -> tuple[int, ...]:
    """Which axes of the kernel at `site` qwix's factors A, B read as inputs."""
    weight = f"{site}/kernel {tuple(shape)}"
    if a.ndim < 2 or b.ndim < 2 or a.shape[-1] != b.shape[0]:
        raise TargetError(f"{site}: qwix factors A {tuple(a.shape)} and B {tuple(b.shape)} are not [..., r] and "
                          "[r, ...] (a dot_general with batch dimensions has per-batch factors, which one LoRA "
                          "matrix cannot hold)")
    given = _given_axes(site, shape, in_axes)
    if given is not None:
        hits = [given]
    elif a.ndim == 2 and b.ndim == 2 and len(shape) > 2:
        hits = [h for h in [_leading(shape, a, b)] if h is not None]
    else:
        hits = _einsum_axes(shape, a, b)
        hits = hits[:1] if len(shape) == 2 and (0,) in hits else hits  # 2-D kernels: Dense reads [in, out]
    if len(hits) > 1:
        raise TargetError(f"{site}: qwix factors A {tuple(a.shape)}, B {tuple(b.shape)} fit {weight} with input "
                          f"axes {hits}; say which with in_axes=((r'{re.escape(site)}', axes),)")
    if not hits or _rows_cols(shape, hits[0]) != (math.prod(a.shape[:-1]), math.prod(b.shape[1:])):
        raise TargetError(f"{site}: qwix factors A {tuple(a.shape)}, B {tuple(b.shape)} do not fit {weight}"
                          + (f" with input axes {hits[0]}" if hits else ""))
    if len(shape) == 2 and hits[0] != (0,):
        raise TargetError(f"{site}: qwix factors A {tuple(a.shape)}, B {tuple(b.shape)} read {weight} as "
                          "[outputs, inputs]; peft_jax LoRA reads a 2-D kernel as [inputs, outputs]")
    return hits[0]


def _rows_cols(shape, axes) -> tuple[int, int]:
    """The matrix shape [inputs, outputs] of a kernel whose input axes are `axes`."""
    rows = math.prod(shape[i] for i in axes)
    return rows, math.prod(shape) // rows


def _scaling(site: str, rank: int, alpha) -> float:
    """alpha / rank for the site, alpha being a number, a qwix `LoraRule` or the provider's rules in order."""
    if isinstance(alpha, numbers.Real):
        return float(alpha) / rank
    rules = [alpha] if hasattr(alpha, "alpha") else list(alpha)
    for rule in rules:
        if hasattr(rule, "alpha") and re.fullmatch(rule.module_path, site):
            if rule.rank != rank:
                raise PeftConfigError(f"{site}: the qwix rule for {rule.module_path!r} states rank {rule.rank}, but "
                                      f"the factors have rank {rank}")
            return float(rule.alpha) / rank
    raise PeftConfigError(f"{site}: no LoRA rule's module_path matches this layer")


def from_qwix(params, alpha: float | Any | Sequence[Any], *, in_axes: tuple = ()) -> tuple[PeftModule, dict]:
    """(our LoRA module, the base params) of a parameter tree holding qwix LoRA leaves.

    `params`: a linen `params` collection (dict / FrozenDict) or an `nnx.State` with the kernels and their
    `*_lora_a` / `*_lora_b` leaves. `alpha`: the qwix rule's alpha, or the `LoraRule`(s) the provider was
    built with (the first rule whose module_path matches a layer gives its alpha and rank). All layers must
    share one rank and scaling, as one LoRA config states them. The base is a nested dict of every other
    leaf, the parameters of the model qwix wrapped. Factors keep their dtype."""
    leaves = sites.tree_leaves(params)
    found = _qwix_factors(leaves)
    if not found:
        raise TargetError("no qwix LoRA parameters (leaves named <weight>_lora_a / <weight>_lora_b) in this tree")
    out, rules, first = {}, [], None
    for site, node in sorted(found.items()):
        if node["weight"] != "kernel" or f"{site}/kernel" not in leaves:
            raise TargetError(f"{site}: qwix LoRA on {site}/{node['weight']}, but peft_jax LoRA attaches to a "
                              f"layer's 'kernel' (the tree {'has' if f'{site}/kernel' in leaves else 'lacks'} "
                              f"{site}/kernel)")
        a, b = node["lora_a"], node["lora_b"]
        shape = tuple(np.shape(leaves[f"{site}/kernel"]))
        axes = _input_axes(site, shape, a, b, in_axes)
        rank = int(a.shape[-1])
        scaling = _scaling(site, rank, alpha)
        if first is None:
            first = (site, rank, scaling)
        elif (rank, scaling) != first[1:]:
            raise PeftConfigError(f"{site}: rank {rank}, scaling {scaling:g}, but {first[0]} has rank {first[1]}, "
                                  f"scaling {first[2]:g}: one LoRA module has one rank and scaling; convert the "
                                  "layers of each qwix rule separately")
        if axes != tuple(range(len(axes))) and _given_axes(site, shape, in_axes) is None:
            rules.append((re.escape(site), axes))  # an Einsum contracting other than the leading kernel axes
        out[site] = {"lora_a": a.reshape(-1, rank), "lora_b": b.reshape(rank, -1)}
    base = tu.unflatten({p: x for p, x in leaves.items() if not p.endswith(tuple(_SUFFIX))})
    targets = "|".join(re.escape(s) for s in sorted(out))
    config = lora.LoraConfig(targets=f"({targets})", rank=first[1], alpha=first[2] * first[1],
                             in_axes=tuple(in_axes) + tuple(rules))
    return PeftModule(params=tu.unflatten(out), config=config), base


def _check_layout(module: PeftModule, ours: dict, theirs: dict, leaves: dict) -> None:
    """Where `like` holds the kernel too, refuses a module that reads other kernel axes as inputs than qwix's
    factors do (the same sizes in another order would otherwise convert silently)."""
    for site, node in theirs.items():
        kernel = leaves.get(f"{site}/{node['weight']}")
        if kernel is None:
            continue
        shape = tuple(np.shape(kernel))
        try:  # qwix's factor shapes alone, else (ambiguous sizes) with the module's in_axes
            want = _input_axes(site, shape, node["lora_a"], node["lora_b"], ())
        except TargetError:
            want = _input_axes(site, shape, node["lora_a"], node["lora_b"], module.config.in_axes)
        got = sites.Matrix.of(site, shape, module.config, rows=np.shape(ours[site]["lora_a"])[0]).in_axes
        if got != want:
            raise TargetError(f"to_qwix: the module reads {site}/{node['weight']} {shape} with input axes {got}, "
                              f"qwix's factors in `like` with input axes {want}")


def to_qwix(module: PeftModule, like, alpha: float | Any | Sequence[Any]):
    """`like` (a tree holding qwix LoRA leaves: the params of the qwix-wrapped model, or its `nnx.State`
    of `nnx.Param` or `nnx.LoRAParam`) with its LoRA leaves replaced by `module`'s, in qwix's shapes and
    dtypes; same pytree type as `like`. Where `like` holds a layer's kernel as well, the module must read
    the same kernel axes as inputs as qwix's factors there.

    `alpha`: the alpha of the qwix rule these factors will run under, or its `LoraRule`(s) as in
    `from_qwix`; B is rescaled by our scaling / (alpha / rank) so that qwix adds exactly our update."""
    if not isinstance(module, PeftModule) or module.family != "lora":
        raise PeftConfigError(f"to_qwix converts LoRA modules, got {getattr(module, 'family', type(module).__name__)}")
    if module.batched:
        raise PeftConfigError("to_qwix: a batched (per-example) module has no qwix form; unbatch it first")
    ours = lora.FAMILY.nodes(module.params)
    leaves = sites.tree_leaves(like)
    theirs = _qwix_factors(leaves)
    if set(ours) != set(theirs):
        raise TargetError(f"to_qwix: the module has LoRA at {sorted(set(ours) - set(theirs))} where `like` has "
                          f"none, and `like` at {sorted(set(theirs) - set(ours))} where the module has none")
    _check_layout(module, ours, theirs, leaves)

    def one(key_path, x):
        path = sites.tree_path(key_path)
        site, _, name = path.rpartition("/")
        key = next((k for s, k in _SUFFIX.items() if name.endswith(s)), None)
        if site not in theirs or key is None or name != theirs[site]["weight"] + "_" + key:
            return x
        new = ours[site][key]
        rank_axis = (-1, 1) if key == "lora_a" else (0, 0)  # (in qwix's factor, in ours)
        if math.prod(np.shape(new)) != math.prod(np.shape(x)) or np.shape(x)[rank_axis[0]] != \
                np.shape(new)[rank_axis[1]]:
            raise TargetError(f"to_qwix: {path} is {tuple(np.shape(x))} in `like`, but the module's {key} at {site} "
                              f"is {tuple(np.shape(new))}")
        if key == "lora_b":
            ratio = module.config.scaling / _scaling(site, int(np.shape(x)[0]), alpha)
            new = new if ratio == 1.0 else new * ratio
        return new.reshape(np.shape(x)).astype(x.dtype)

    return jax.tree_util.tree_map_with_path(one, like)
