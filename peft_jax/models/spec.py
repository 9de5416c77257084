"""Parameter specifications: shape, logical axes and initializer of every base leaf.

A model describes its parameters once, as a nested dict of `ParamSpec`; the
real parameters, their abstract shapes (for loading into a sharding without
materialising) and their logical axis names are all derived from it
(`models.base.Model.init`, `abstract_params`, `logical_axes`).
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from peft_jax.tree import flatten as _flatten, path_str, unflatten  # noqa: F401


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    """One base parameter: shape, logical axis names (one per dim) and init."""

    shape: tuple[int, ...]
    axes: tuple[str, ...]
    init: str = "normal"  # normal | ones | zeros
    stddev: float = 1.0

    def __post_init__(self):
        if len(self.shape) != len(self.axes):
            raise ValueError(f"ParamSpec: shape {self.shape} and axes {self.axes} differ in rank")


def is_spec(x: Any) -> bool:
    return isinstance(x, ParamSpec)


def flatten(tree) -> dict[str, Any]:
    """{'a/b/c': leaf}; ParamSpecs count as leaves."""
    return _flatten(tree, is_leaf=is_spec)


def init_params(specs: dict, rng: jax.Array, dtype=jnp.float32) -> dict:
    """Random parameters for `specs`; each leaf's key is derived from its path, so
    adding a parameter elsewhere does not change the others."""

    def one(path, spec: ParamSpec):
        if spec.init == "ones":
            return jnp.ones(spec.shape, dtype)
        if spec.init == "zeros":
            return jnp.zeros(spec.shape, dtype)
        key = jax.random.fold_in(rng, zlib.crc32(path_str(path).encode()) & 0x7FFFFFFF)
        return (spec.stddev * jax.random.normal(key, spec.shape, jnp.float32)).astype(dtype)

    return jax.tree_util.tree_map_with_path(one, specs, is_leaf=is_spec)


def abstract_params(specs: dict, dtype=jnp.float32) -> dict:
    """`jax.ShapeDtypeStruct` tree for `specs` (nothing allocated)."""
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, dtype), specs, is_leaf=is_spec)


def logical_axes(specs: dict) -> dict:
    """Tree of `jax.sharding.PartitionSpec` over logical axis names, one per leaf."""
    return jax.tree.map(lambda s: jax.sharding.PartitionSpec(*s.axes), specs, is_leaf=is_spec)


def count(tree) -> int:
    """Number of scalars in a tree of arrays, shape structs or specs."""
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree, is_leaf=is_spec)))
