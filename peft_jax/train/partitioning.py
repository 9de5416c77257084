"""Meshes, logical-axis rules and shardings for training PEFT modules on a frozen base.

The models name every parameter dimension with a logical axis (embed, heads,
kv_heads, mlp, vocab, relpos_buckets); one table of rules maps those names to
the mesh axes `data`, `fsdp` and `model`. The frozen base is created or loaded
straight into its sharding (shapes come from `jax.eval_shape`/`param_specs`,
nothing is materialised whole on one device). PEFT leaves are replicated by
default: they are small, and replication keeps the optimizer update local.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from peft_jax import peft as peft_lib
from peft_jax import tree as tu
from peft_jax.models import load_pretrained
from peft_jax.models import spec as spec_lib

log = logging.getLogger(__name__)

MESH_AXES = ("data", "fsdp", "model")
# The batch is split over both data-parallel axes; weights use fsdp (embed) and model (heads, mlp, vocab).
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("heads", "model"),
    ("kv_heads", None),  # multi-query models have one KV head: sharding it would split a head
    ("mlp", "model"),
    ("vocab", "model"),
    ("relpos_buckets", None),
)


class MeshError(ValueError):
    """A mesh shape that does not fit the devices, or a batch that does not fit the mesh."""


def mesh_shape(sizes: dict[str, int], num_devices: int) -> tuple[int, ...]:
    """Concrete (data, fsdp, model) sizes; at most one -1 takes whatever devices are left."""
    unknown = [a for a in MESH_AXES if a not in sizes]
    if unknown:
        raise MeshError(f"mesh sizes lack axes {unknown}; expected sizes for {MESH_AXES}")
    shape = [int(sizes[a]) for a in MESH_AXES]
    if any(s == 0 or s < -1 for s in shape):
        raise MeshError(f"mesh sizes must be positive or -1 (auto), got {dict(zip(MESH_AXES, shape))}")
    if shape.count(-1) > 1:
        raise MeshError(f"at most one mesh axis may be -1 (auto), got {dict(zip(MESH_AXES, shape))}")
    fixed = math.prod(s for s in shape if s != -1)
    if num_devices % fixed:
        raise MeshError(f"mesh {dict(zip(MESH_AXES, shape))} needs a multiple of {fixed} devices, "
                        f"but there are {num_devices}: {fixed} does not divide {num_devices}")
    shape = [num_devices // fixed if s == -1 else s for s in shape]
    if math.prod(shape) != num_devices:
        raise MeshError(f"mesh {dict(zip(MESH_AXES, shape))} uses {math.prod(shape)} devices, "
                        f"but there are {num_devices}; set one axis to -1 to use them all")
    return tuple(shape)


def make_mesh(sizes: dict[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, model) mesh over `devices` (default: all devices of all processes)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(sizes, len(devices))
    return jax.make_mesh(shape, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3, devices=devices)


def _rule_table(rules) -> dict[str, Any]:
    table = {}
    for name, axes in rules:
        if name in table:
            raise MeshError(f"logical axis {name!r} has two rules: {table[name]!r} and {axes!r}")
        table[name] = axes
    return table


def _axes_tuple(axes) -> tuple[str, ...]:
    if axes is None:
        return ()
    return (axes,) if isinstance(axes, str) else tuple(axes)


def logical_to_mesh(logical: P, shape: Sequence[int], mesh: Mesh, rules=DEFAULT_RULES) -> P:
    """Mesh PartitionSpec for one array: each logical name mapped by `rules`.

    A dimension the mapped mesh axes do not divide stays replicated (tiny test
    models have dimensions smaller than a pod), and a mesh axis is used at most
    once per array, as XLA requires.
    """
    table = _rule_table(rules)
    used: set[str] = set()
    out = []
    for dim, name in zip(shape, tuple(logical) + (None,) * (len(shape) - len(logical))):
        if name is not None and name not in table:
            raise MeshError(f"logical axis {name!r} has no rule; rules cover {sorted(table)}")
        axes = tuple(a for a in _axes_tuple(table.get(name)) if a not in used and mesh.shape.get(a, 1) > 1)
        size = math.prod(mesh.shape[a] for a in axes)
        if axes and dim % size:
            log.info("dimension %d (%s) is not divisible by mesh axes %s (%d): replicated", dim, name, axes, size)
            axes = ()
        used.update(axes)
        out.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return P(*out)


def tree_shardings(abstract, logical, mesh: Mesh, rules=DEFAULT_RULES):
    """NamedSharding tree for an abstract tree (arrays or ShapeDtypeStructs) and its logical specs."""
    return jax.tree.map(lambda a, spec: NamedSharding(mesh, logical_to_mesh(spec, a.shape, mesh, rules)),
                        abstract, logical, is_leaf=lambda x: isinstance(x, P))


def base_shardings(model, mesh: Mesh, rules=DEFAULT_RULES):
    """Sharding of every base parameter of `model`, from its logical axes."""
    return tree_shardings(model.abstract_params(), model.logical_axes(), mesh, rules)


def init_base(model, rng: jax.Array, mesh: Mesh, rules=DEFAULT_RULES) -> dict:
    """Random base parameters placed in their sharding, bit-identical to `model.init(rng)`.

    Leaves are created one at a time (so the whole base never sits on one
    device) by the model's own eager initialiser: a jitted initialiser fuses
    differently and changes the last bit of some values, and with it the base
    fingerprint that ties a trained module to its base.
    """
    shardings = tu.flatten(base_shardings(model, mesh, rules))
    specs = spec_lib.flatten(model.param_specs())
    out = {}
    for path, spec in specs.items():
        # A one-leaf tree with the same path gets the same per-path key as in the full init.
        leaf = np.asarray(tu.flatten(spec_lib.init_params(tu.unflatten({path: spec}), rng))[path])
        out[path] = jax.make_array_from_callback(leaf.shape, shardings[path], lambda idx, x=leaf: x[idx])
    return tu.unflatten(out)


def load_base(path: str, mesh: Mesh, rules=DEFAULT_RULES, compute_dtype: str = "float32"):
    """(model, params) from a Hugging Face checkpoint, each tensor read straight into its shard."""
    return load_pretrained(path, compute_dtype=compute_dtype,
                           shardings=lambda model: base_shardings(model, mesh, rules))


def replicated(mesh: Mesh) -> NamedSharding:
    """The fully replicated sharding on `mesh`."""
    return NamedSharding(mesh, P())


def peft_shardings(model, module: peft_lib.Module, mesh: Mesh, rules=DEFAULT_RULES, mode: str = "replicated"):
    """Shardings for a PEFT module (a Module-shaped tree, usable as jit in/out shardings).

    mode 'replicated' (default) copies every leaf to every device; 'logical'
    shards each leaf like the base dimension it touches (for very large ranks).
    """
    if mode == "replicated":
        sh = jax.tree.map(lambda _: replicated(mesh), module.params)
    elif mode == "logical":
        sh = tree_shardings(module.params, peft_lib.logical_axes(model, module), mesh, rules)
    else:
        raise MeshError(f"peft sharding mode must be 'replicated' or 'logical', got {mode!r}")
    return module.replace(params=sh)


def batch_spec(rules=DEFAULT_RULES) -> P:
    """PartitionSpec of a [batch, ...] input array."""
    axes = _axes_tuple(_rule_table(rules).get("batch"))
    return P(axes if len(axes) > 1 else (axes[0] if axes else None))


def data_parallel_size(mesh: Mesh, rules=DEFAULT_RULES) -> int:
    """How many ways the batch dimension is split."""
    return math.prod(mesh.shape[a] for a in _axes_tuple(_rule_table(rules).get("batch")))


def check_batch(global_batch_size: int, mesh: Mesh, rules=DEFAULT_RULES, micro_batches: int = 1) -> None:
    """Refuses a batch that the data axes (times the micro-batches) do not divide."""
    n = data_parallel_size(mesh, rules)
    if global_batch_size % (n * micro_batches):
        axes = {a: mesh.shape[a] for a in _axes_tuple(_rule_table(rules).get("batch"))}
        raise MeshError(f"batch_size={global_batch_size} is not divisible by the data-parallel axes {axes} "
                        f"(= {n}) times micro_batches={micro_batches}: it must be a multiple of {n * micro_batches}")


def local_rows(mesh: Mesh, global_batch_size: int, rules=DEFAULT_RULES) -> slice:
    """The rows of the global batch that this process's devices hold (one contiguous block)."""
    sharding = NamedSharding(mesh, batch_spec(rules))
    index_map = sharding.addressable_devices_indices_map((global_batch_size,))
    blocks = sorted({(i[0].start or 0, global_batch_size if i[0].stop is None else i[0].stop)
                     for i in index_map.values()})
    for (_, stop), (start, _) in zip(blocks, blocks[1:]):
        if start != stop:  # make_array_from_process_local_data needs one block per process
            raise MeshError(f"this process's devices hold a non-contiguous part of the batch: {blocks}")
    return slice(blocks[0][0], blocks[-1][1])


def global_batch(local: dict[str, np.ndarray], mesh: Mesh, global_batch_size: int, rules=DEFAULT_RULES) -> dict:
    """Global jax Arrays from this process's rows (`local_rows`) of every batch field."""
    sharding = NamedSharding(mesh, batch_spec(rules))

    def one(x):
        x = np.asarray(x)
        return jax.make_array_from_process_local_data(sharding, x, (global_batch_size,) + x.shape[1:])

    return {k: one(v) for k, v in local.items()}
