"""Lottery-ticket sparse fine-tuning (LT-SFT, Ansell et al. 2022) in two phases.

Phase 1 trains a *dense* delta on every entry of the target leaves
(`dense_module`: a sparse module whose indices cover everything). `select`
then keeps, per leaf, the `density` fraction of entries that moved most and
rewinds their values to zero; phase 2 trains only those entries. The selected
module has exactly the shapes `peft.init` gives a `SparseConfig` of that
density, so checkpoints of either phase can be restored from shapes alone.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from peft_jax import tree as tu
from peft_jax.peft import PeftModule, SparseConfig
from peft_jax.peft.families import sparse as sparse_family
from peft_jax.peft.families.sparse import num_selected  # the count `peft.init` uses; re-exported here


def dense_module(model, config: SparseConfig) -> PeftModule:
    """Phase-1 module: a zero delta on every entry of every target leaf (density 1)."""
    params = {}
    for path, spec in sparse_family.target_leaves(model, config).items():
        size = int(np.prod(spec.shape))
        params[path] = {"indices": jnp.arange(size, dtype=jnp.int32), "values": jnp.zeros((size,), jnp.float32)}
    return PeftModule(params=tu.unflatten(params), config=dataclasses.replace(config, density=1.0))


def select(module: PeftModule, density: float, *, rewind: bool = True) -> PeftModule:
    """Keeps the top `density` fraction of entries of each leaf by |value| (ties: lower index first).

    rewind=True zeroes the kept values (LT-SFT retrains the selected entries
    from the pretrained weights); rewind=False keeps the dense-phase values.
    """
    if not isinstance(module.config, SparseConfig):
        raise ValueError(f"select needs a sparse module, got family {module.family!r}")
    nodes = sparse_family.FAMILY.nodes(module.params)
    out = {}
    for path, node in nodes.items():
        values = node["values"]
        k = num_selected(values.shape[0], density)
        # A stable sort on -|v| makes the choice deterministic (same run -> same ticket).
        order = jnp.argsort(-jnp.abs(values), stable=True)[:k]
        order = jnp.sort(order)
        kept = jnp.zeros((k,), jnp.float32) if rewind else values[order]
        out[path] = {"indices": node["indices"][order].astype(jnp.int32), "values": kept}
    config = dataclasses.replace(module.config, density=density)
    return module.replace(params=tu.unflatten(out), config=config)
