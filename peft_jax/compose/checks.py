"""What may be composed, and the fingerprints that record what was.

`combine` calls `check_inputs` before it computes anything. Every refusal is a
`CompositionError` whose message names the offending module (by position) and,
where there is one, the parameter path: modules trained on different bases,
mixed PEFT families, different target modules, shapes that the strategy cannot
sum (which axes may differ is the family's rule, e.g. LoRA ranks under `param`), a
weight count that does not match, and NaN/Inf inside a module. Checks that only
concern one family (LoRA scalings, adapter activations) live in its family file.

`module_fingerprint` is the identity of a module's parameters (and config): the
provenance a composed module records for each of its inputs.
"""

from __future__ import annotations

import hashlib
import json
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from peft_jax import tree as tu
from peft_jax.peft.errors import CompositionError
from peft_jax.peft.families.base import is_concrete
from peft_jax.peft.module import PeftModule, config_to_dict

__all__ = ["CompositionError", "check_base", "check_finite", "check_modules", "check_shapes", "check_structure",
           "check_weights", "input_record", "is_concrete", "module_fingerprint"]


def module_fingerprint(module: PeftModule) -> str:
    """16-hex SHA-256 of a module's config, batching and every leaf (path, shape, dtype, bytes).

    Metadata is left out, so recording provenance does not change a module's identity.
    Leaves are copied to the host once; modules are small next to the base.
    """
    h = hashlib.sha256()
    h.update(json.dumps(config_to_dict(module.config), sort_keys=True).encode())
    h.update(f"batched={module.batched};".encode())
    for path, leaf in sorted(tu.flatten(module.params).items()):
        arr = np.ascontiguousarray(np.asarray(jax.device_get(leaf)))
        h.update(f"{path}:{arr.shape}:{arr.dtype.name};".encode())
        h.update(arr.tobytes())
    return h.hexdigest()[:16]


def check_modules(modules, *, mixed_families_ok: bool = False) -> list[PeftModule]:
    """A non-empty list of unbatched modules of one family (unless `mixed_families_ok`)."""
    if isinstance(modules, PeftModule) or not isinstance(modules, Sequence) or not modules:
        raise CompositionError("modules must be a non-empty list of peft_jax Modules")
    for i, m in enumerate(modules):
        if not isinstance(m, PeftModule):
            raise CompositionError(f"modules[{i}] is a {type(m).__name__}, not a peft_jax Module")
        if m.batched:
            raise CompositionError(f"modules[{i}] is batched (per-example); unbatch it before composing")
        if not mixed_families_ok and m.family != modules[0].family:
            raise CompositionError(f"mixed PEFT families: modules[0] is {modules[0].family} but modules[{i}] is "
                                   f"{m.family}; only 'stack' applies modules of different families together")
    return list(modules)


def check_weights(weights, n: int, *, grid: bool = False) -> jax.Array:
    """Weights as a float32 array [n] (or [G, n] for a grid); refuses a count that does not match."""
    arr = jnp.asarray(weights, jnp.float32)
    want = 2 if grid else 1
    if arr.ndim != want or arr.shape[-1] != n:
        shape = "[G, n]" if grid else "[n]"
        raise CompositionError(f"weights must have shape {shape} with n = {n} modules, got shape {tuple(arr.shape)}")
    if is_concrete(arr) and not bool(jnp.all(jnp.isfinite(arr))):
        raise CompositionError(f"weights contain NaN or Inf: {np.asarray(arr).tolist()}")
    return arr


def check_base(modules: list[PeftModule]) -> str | None:
    """The base fingerprint the modules share (None if none records one); refuses two different bases."""
    recorded = [(i, m.base_fingerprint) for i, m in enumerate(modules) if m.base_fingerprint]
    for i, fp in recorded[1:]:
        j, first = recorded[0]
        if fp != first:
            raise CompositionError(f"modules trained on different bases: modules[{j}] on base {first}, "
                                   f"modules[{i}] on base {fp}; a composition needs one frozen base")
    return recorded[0][1] if recorded else None


@jax.jit
def _finite_flags(params):
    return jax.tree.map(lambda x: jnp.all(jnp.isfinite(x)) if jnp.issubdtype(x.dtype, jnp.inexact)
                        else jnp.bool_(True), params)


def check_finite(modules: list[PeftModule]) -> None:
    """Refuses NaN/Inf, naming the module and leaf. Skipped for traced modules (values unknown)."""
    for i, m in enumerate(modules):
        flags = _finite_flags(m.params)
        if not all(is_concrete(x) for x in jax.tree.leaves(flags)):
            continue  # inside a trace (jit / grad of the caller): values are not known yet
        flags = tu.flatten(jax.device_get(flags))
        bad = sorted(p for p, ok in flags.items() if not ok)
        if bad:
            raise CompositionError(f"modules[{i}] has NaN or Inf values in parameter {bad[0]}"
                                   + (f" (and {len(bad) - 1} more leaves)" if len(bad) > 1 else ""))


def check_structure(modules: list[PeftModule]) -> list[str]:
    """The modules' shared leaf paths; refuses different target modules, naming the first differing path."""
    paths = [sorted(tu.flatten(m.params)) for m in modules]
    for i, other in enumerate(paths[1:], 1):
        if other != paths[0]:
            diff = sorted(set(paths[0]) ^ set(other))[0]
            where = f"modules[0] has it, modules[{i}] does not" if diff in paths[0] else \
                f"modules[{i}] has it, modules[0] does not"
            raise CompositionError(f"modules target different parameters: first differing path {diff!r} "
                                   f"({where}); compose modules trained on the same target modules")
    return paths[0]


def check_shapes(modules: list[PeftModule], free_axes, hint: str = "") -> None:
    """Refuses leaves whose shapes differ outside `free_axes(path) -> set of axes allowed to differ`."""
    flats = [tu.flatten(m.params) for m in modules]
    for path in sorted(flats[0]):
        ref = flats[0][path].shape
        free = free_axes(path)
        for i, flat in enumerate(flats[1:], 1):
            got = flat[path].shape
            fixed_differs = len(got) != len(ref) or any(a != b for ax, (a, b) in enumerate(zip(ref, got))
                                                        if ax not in free)
            if fixed_differs:
                raise CompositionError(f"parameter {path!r}: modules[{i}] has shape {tuple(got)} but modules[0] "
                                       f"has {tuple(ref)}{hint}")


def input_record(module: PeftModule) -> dict:
    """What a composed module remembers about one input: its fingerprint, family and scalar metadata."""
    labels = {k: v for k, v in module.metadata.items()
              if k != "base_fingerprint" and isinstance(v, (str, int, float, bool))}
    return {"fingerprint": module_fingerprint(module), "family": module.family, "metadata": labels}
