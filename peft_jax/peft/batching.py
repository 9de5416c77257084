"""Batched modules: stack modules of one structure so row b of a batch uses module b."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from peft_jax.peft import families
from peft_jax.peft.module import PeftModule


def batch(modules: list[PeftModule]) -> PeftModule:
    """One module whose leaves have a leading axis over `modules` (all of one structure and config)."""
    if not modules:
        raise ValueError("batch() needs at least one module")
    first = modules[0]
    for i, m in enumerate(modules[1:], 1):
        if m.config != first.config or jax.tree.structure(m.params) != jax.tree.structure(first.params):
            raise ValueError(f"module {i} differs in config or structure from module 0; batch only like modules")
    if first.batched:
        raise ValueError("cannot batch already-batched modules")
    if not families.get(first.family).batchable:
        raise ValueError(f"cannot batch {first.family} modules: the models apply them to one set of weights")
    params = jax.tree.map(lambda *xs: jnp.stack(xs), *[m.params for m in modules])
    return first.replace(params=params, batched=True)


def unbatch(module: PeftModule) -> list[PeftModule]:
    """The individual modules of a batched module."""
    n = jax.tree.leaves(module.params)[0].shape[0]
    return [module.replace(params=jax.tree.map(lambda x: x[i], module.params), batched=False) for i in range(n)]
