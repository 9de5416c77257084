"""Where modules attach to a base: its leaves and kernels, target regexes, per-site keys and broadcasting.

A base is either a peft_jax model (its `param_specs`) or any parameter pytree: nested dicts, a flax
`FrozenDict`, an `nnx.State` (whose `Variable` leaves flatten to `.../kernel/value`; the trailing
`value` is dropped, so paths read `.../kernel` everywhere). Paths are '/'-joined keys.

A kernel of any rank is read as a matrix [inputs, outputs] (`Matrix`): 2-D kernels are [in, out]
(Dense); an N-D kernel has its input axes given per target pattern (the config's `in_axes`), or
inferred for the two common layouts of `DenseGeneral` / `Einsum` kernels, [width, ...] (query, key,
value: [d_model, heads, head_dim]) and [..., width] (attention output: [heads, head_dim, d_model]),
where the width is the size that occurs most often among the base's dimensions.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import math
import re

import jax
import numpy as np

from peft_jax import tree as tu
from peft_jax.models import spec as spec_lib
from peft_jax.peft.errors import TargetError

_VARIABLE_FIELDS = ("value", "raw_value")  # the array inside an nnx Variable / VariableState


def _key(k) -> str | None:
    """One path component; None for the attribute of a variable container that holds the array."""
    if isinstance(k, jax.tree_util.GetAttrKey) and k.name in _VARIABLE_FIELDS:
        return None
    return str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))))


def tree_path(path) -> str:
    """'/'-joined path of a jax key path, without the `value` attribute of nnx variables."""
    return "/".join(part for part in map(_key, path) if part is not None)


def tree_leaves(tree) -> dict[str, jax.Array]:
    """{path: leaf} of any parameter pytree (dict, FrozenDict, nnx.State)."""
    return {tree_path(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def is_model(base) -> bool:
    """True for a peft_jax model (something with parameter specs), False for a parameter pytree."""
    return hasattr(base, "param_specs") and callable(base.param_specs)


def shapes_of(base) -> dict[str, tuple[int, ...]]:
    """{leaf path: shape} of a peft_jax model or of a parameter pytree."""
    if is_model(base):
        return {p: tuple(s.shape) for p, s in spec_lib.flatten(base.param_specs()).items()}
    return {p: tuple(np.shape(x)) for p, x in tree_leaves(base).items()}


def leaf_specs(model) -> dict:
    """{leaf path: ParamSpec} of every base parameter of `model`."""
    return spec_lib.flatten(model.param_specs())


def kernel_shapes(base) -> dict[str, tuple[int, ...]]:
    """{module path: kernel shape} for every leaf called `kernel` (the path without '/kernel')."""
    return {p[: -len("/kernel")]: s for p, s in shapes_of(base).items() if p.endswith("/kernel") and len(s) >= 2}


def kernel_specs(model) -> dict:
    """{module path: kernel ParamSpec} for every kernel of the model (the path without '/kernel')."""
    return {p[: -len("/kernel")]: s for p, s in leaf_specs(model).items() if p.endswith("/kernel")}


def width(shapes: dict[str, tuple]) -> int | None:
    """The model width: the size that occurs most often among all dimensions (None on a tie)."""
    counts = collections.Counter(n for s in shapes.values() for n in s).most_common(2)
    if not counts or (len(counts) == 2 and counts[0][1] == counts[1][1]):
        return None
    return counts[0][0]


def _rule_axes(site: str, config) -> tuple[int, ...] | None:
    """The input axes the config gives for `site` (first matching pattern of `config.in_axes`), or None."""
    for pattern, axes in getattr(config, "in_axes", ()) or ():
        if re.fullmatch(pattern, site):
            return tuple(int(a) for a in axes)
    return None


@dataclasses.dataclass(frozen=True)
class Matrix:
    """A kernel of shape `shape` read as a matrix: axes `perm[:n_in]` are its inputs, the rest its outputs."""

    shape: tuple[int, ...]
    perm: tuple[int, ...]
    n_in: int

    @classmethod
    def of(cls, site: str, shape, config, *, rows: int | None = None, base_width: int | None = None) -> Matrix:
        """The matrix view of the kernel at module path `site`: input axes from `config.in_axes`, else a
        leading split with `rows` inputs (what a module already holds), else the common layouts."""
        shape = tuple(int(n) for n in shape)
        nd = len(shape)
        axes = _rule_axes(site, config)
        if axes is not None:
            axes = tuple(sorted({a % nd for a in axes})) if all(-nd <= a < nd for a in axes) else None
            if not axes or len(axes) == nd:
                raise TargetError(f"{site}: in_axes {_rule_axes(site, config)} are not a proper subset of the axes "
                                  f"of its kernel of shape {shape}")
            return cls(shape, axes + tuple(a for a in range(nd) if a not in axes), len(axes))
        if nd == 2:
            return cls(shape, (0, 1), 1)
        for k in range(1, nd):  # leading split: DenseGeneral kernels are [inputs..., outputs...]
            if rows is not None and math.prod(shape[:k]) == rows:
                return cls(shape, tuple(range(nd)), k)
        if rows is None:
            hits = [i for i, n in enumerate(shape) if n == base_width]
            if hits == [0]:
                return cls(shape, tuple(range(nd)), 1)
            if hits == [nd - 1]:
                return cls(shape, tuple(range(nd)), nd - 1)
        raise TargetError(f"{site}: cannot tell the input axes of its kernel of shape {shape} (model width "
                          f"{base_width}); give them in the config: in_axes=((r'{re.escape(site)}', (0,)),)")

    @property
    def in_axes(self) -> tuple[int, ...]:
        return self.perm[: self.n_in]

    @property
    def shape2d(self) -> tuple[int, int]:
        rows = math.prod(self.shape[a] for a in self.in_axes)
        return rows, math.prod(self.shape) // max(rows, 1)

    @property
    def leading(self) -> bool:
        """True when the inputs are the leading axes (a plain reshape gives the matrix)."""
        return self.perm == tuple(range(len(self.shape)))

    def to2d(self, w):
        """The kernel as a [inputs, outputs] matrix."""
        w = w if self.leading else w.transpose(self.perm)
        return w.reshape(self.shape2d)

    def from2d(self, w2):
        """Inverse of `to2d`."""
        w = w2.reshape(tuple(self.shape[a] for a in self.perm))
        return w if self.leading else w.transpose(np.argsort(self.perm))


def matrices(base, config, paths) -> dict[str, Matrix]:
    """{module path: Matrix} of the kernels at `paths` of a model or parameter tree."""
    shapes = shapes_of(base)
    w = width(shapes)
    return {p: Matrix.of(p, shapes[p + "/kernel"], config, base_width=w) for p in paths}


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
