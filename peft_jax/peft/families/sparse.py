"""Sparse fine-tuning (LT-SFT, Ansell et al. 2022): a delta on a few entries of matching base leaves.

Params per target leaf (at the leaf's own path, e.g. `.../attention/query/kernel`): `indices`
(sorted, unique, int32, not trainable) and `values` of the delta at those flat positions. The
entries are chosen after a short dense phase (`peft_jax.train.sparse`). Composition works on the
union of the inputs' indices; a sparse module has no per-example form.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from peft_jax import tree as tu
from peft_jax.peft.errors import CompositionError, PeftConfigError
from peft_jax.peft.families import sites
from peft_jax.peft.families.base import Family, is_concrete, require_pattern, require_positive


@dataclasses.dataclass(frozen=True)
class SparseConfig:
    """Sparse fine-tuning (LT-SFT): a delta on `density` of the entries of matching base leaves.

    The entries are chosen by magnitude of change after a short dense phase
    (`peft_jax.train.sparse.select`); until then `init` picks none.
    """

    targets: str = r".*(attention|mlp)/\w+/kernel$"
    density: float = 0.01
    family: str = dataclasses.field(default="sparse", init=False)

    def __post_init__(self):
        require_pattern("targets", self.targets, "sparse")
        require_positive("density", self.density, "sparse")
        if self.density > 1.0:
            raise PeftConfigError(f"sparse: density must be in (0, 1], got {self.density}")


def num_selected(size: int, density: float) -> int:
    """Entries kept in a leaf of `size` entries."""
    return max(1, int(round(density * size)))


def target_leaves(model, config: SparseConfig) -> dict:
    """{leaf path: ParamSpec} of the base leaves that `config.targets` selects."""
    specs = sites.leaf_specs(model)
    return {p: specs[p] for p in sites.match(specs, config.targets, "sparse targets")}


def target_shapes(base, config: SparseConfig) -> dict[str, tuple]:
    """{leaf path: shape} of the leaves that `config.targets` selects in a model or parameter tree."""
    shapes = sites.shapes_of(base)
    return {p: shapes[p] for p in sites.match(shapes, config.targets, "sparse targets")}


def _union(modules) -> dict:
    """{leaf path: (sorted unique union of indices, [positions of module i's entries in it])}, on the host."""
    nodes = [FAMILY.nodes(m.params) for m in modules]
    extras = {}
    for path in nodes[0]:
        leaves = [n[path]["indices"] for n in nodes]
        if not all(is_concrete(x) for x in leaves):
            raise CompositionError(f"sparse parameter {path!r}: composing sparse modules needs concrete indices "
                                   "(the union's size depends on them); call combine outside jit")
        idx = [np.asarray(jax.device_get(x)).astype(np.int64) for x in leaves]
        union = np.unique(np.concatenate(idx))
        extras[path] = (jnp.asarray(union, jnp.int32),
                        [jnp.asarray(np.searchsorted(union, i), jnp.int32) for i in idx])
    return extras


def _param(plan, P, w, extras):
    out = {}
    for path, (union, positions) in extras.items():
        values = [tu.flatten(p)[path + "/values"] for p in P]
        acc = jnp.zeros(union.shape, jnp.float32)
        for i, (pos, v) in enumerate(zip(positions, values)):
            acc = acc.at[pos].add(w[i] * v.astype(jnp.float32))
        out[path] = {"indices": union, "values": acc.astype(values[0].dtype)}
    return tu.unflatten(out)


class SparseFamily(Family):
    """Sparse deltas on base leaves: exact to merge, summed over the union of indices."""

    name = "sparse"
    config_class = SparseConfig
    node_keys = frozenset({"indices"})
    mergeable = True
    from_tree = True
    batchable = False
    adds_parameters = False
    strategies = ("param", "ties", "dare", "stack")
    kernels = {"param": _param}
    scaled_leaves = frozenset({"values"})
    schedule_fields = {"dense_fraction": 0.5}  # LT-SFT: the dense phase's share of the training steps

    def init(self, model, config: SparseConfig, rng, params):
        out = {}
        for path, shape in target_shapes(model, config).items():
            size = int(np.prod(shape))
            n = num_selected(size, config.density)
            idx = jnp.sort(jax.random.choice(sites.site_key(rng, path), size, (n,), replace=False)).astype(jnp.int32)
            out[path] = {"indices": idx, "values": jnp.zeros((n,), jnp.float32)}
        return tu.unflatten(out)

    def transform_leaf(self, w, view, name):
        if view.batched:
            raise ValueError(f"sparse deltas cannot be batched per example (leaf {name!r}); merge them first")
        flat = w.reshape(-1).astype(jnp.float32)
        # Indices are stored sorted and unique, which lets XLA emit a cheaper scatter.
        return flat.at[view.node["indices"]].add(view.node["values"].astype(jnp.float32), indices_are_sorted=True,
                                                 unique_indices=True).reshape(w.shape)

    def base_leaf(self, path):
        return path

    def fit(self, path, node, shapes, config):
        if path not in shapes:
            return f"the base has no parameter {path}"
        if node["indices"].shape != node["values"].shape:
            return f"indices {tuple(node['indices'].shape)} and values {tuple(node['values'].shape)} differ in shape"
        size = int(np.prod(shapes[path]))
        if node["indices"].shape[-1] > size:
            return f"{node['indices'].shape[-1]} entries for a base leaf of {size} entries (shape {shapes[path]})"
        idx = node["indices"]
        if is_concrete(idx) and idx.size and not 0 <= int(np.min(idx)) <= int(np.max(idx)) < size:
            return f"indices outside [0, {size}) for a base leaf of shape {shapes[path]}"
        return None

    def fold(self, w, node, config, sign):
        return w.reshape(-1).at[node["indices"]].add(sign * node["values"]).reshape(w.shape)

    def count_trainable(self, params):
        # Indices are not trainable: only the values count.
        return int(sum(np.prod(n["values"].shape) for n in self.nodes(params).values()))

    def free_axes(self, plan):
        return lambda path: {0}  # each module has its own number of entries; they are merged over the union

    def composition_extras(self, modules, plan):
        return _union(modules)

    def to_taus(self, plan, P, extras):
        taus = {}
        for path, (union, positions) in extras.items():
            vals = [tu.flatten(p)[path + "/values"].astype(jnp.float32) for p in P]
            taus[path] = jnp.stack([jnp.zeros(union.shape, jnp.float32).at[pos].set(v)
                                    for pos, v in zip(positions, vals)])
        return taus

    def from_taus(self, plan, merged, P, extras):
        return tu.unflatten({path: {"indices": extras[path][0], "values": v} for path, v in merged.items()})


FAMILY = SparseFamily()
