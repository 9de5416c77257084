"""Where modules attach to a base: its kernels and leaves, target regexes, per-site keys and broadcasting.

Helpers the family files share when they create a module from a model's parameter specs or apply
one per example.
"""

from __future__ import annotations

import hashlib

import jax

from peft_jax import tree as tu
from peft_jax.models import spec as spec_lib
from peft_jax.peft.errors import TargetError


def leaf_specs(model) -> dict:
    """{leaf path: ParamSpec} of every base parameter of `model`."""
    return spec_lib.flatten(model.param_specs())


def kernel_specs(model) -> dict:
    """{module path: kernel ParamSpec} for every 2-D kernel of the model (the path without '/kernel')."""
    return {p[: -len("/kernel")]: s for p, s in leaf_specs(model).items() if p.endswith("/kernel")}


def match(paths, pattern: str, what: str) -> list[str]:
    """The paths that fully match `pattern`; none is a `TargetError` listing the available paths."""
    hits = tu.select(paths, pattern)
    if not hits:
        shown = "\n  ".join(sorted(paths)[:60])
        raise TargetError(f"{what} regex {pattern!r} matches no parameter path; available paths:\n  {shown}")
    return hits


def site_key(rng: jax.Array, path: str) -> jax.Array:
    """The init key of the site at `path`: fixed by the path, so adding a target elsewhere changes nothing."""
    return jax.random.fold_in(rng, int(hashlib.md5(path.encode()).hexdigest()[:7], 16))


def expand_batch(v: jax.Array, ndim: int) -> jax.Array:
    """[B, n] -> [B, 1, ..., 1, n]: a per-example vector that broadcasts over the positions of an ndim array."""
    return v.reshape(v.shape[:1] + (1,) * (ndim - 2) + v.shape[1:])
