"""How the models consult PEFT modules while they compute.

A model walks its base parameter tree; beside it walks a tuple of `View`s, one
per active module, each pointing at the same path inside its module. A layer
asks for what concerns it (a leaf, a kernel, a sub-layer output, the soft prompt)
and each view's family contributes its part (`families.Family`: leaf transform,
input transform, additive update, output transform, after-sub-layer, soft prompt).
Several active modules compose in order: LoRA updates add, scales multiply,
adapters stack.
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from peft_jax.peft import families
from peft_jax.peft.module import PeftModule


@dataclasses.dataclass(frozen=True)
class View:
    """The part of one active module at the current position of the walk."""

    node: Any
    module: PeftModule

    @property
    def batched(self) -> bool:
        """True when every leaf of the module carries a leading per-example axis."""
        return self.module.batched

    @property
    def family(self) -> families.Family:
        """The registered family that applies this module's nodes."""
        return families.get(self.module.family)


Views = tuple[View, ...]


def as_views(peft: PeftModule | Sequence[PeftModule] | None) -> Views:
    """Normalises `peft` (None, one module, or modules applied together) to views at the root."""
    if peft is None:
        return ()
    modules = [peft] if isinstance(peft, PeftModule) else list(peft)
    for m in modules:
        if not isinstance(m, PeftModule):
            raise TypeError(f"peft must be a peft_jax Module or a sequence of them, got {type(m).__name__}")
    return tuple(View(m.params, m) for m in modules)


def child(views: Views, key: str) -> Views:
    """Views one level down; modules with nothing under `key` drop out."""
    return tuple(View(v.node[key], v.module) for v in views if isinstance(v.node, dict) and key in v.node)


@dataclasses.dataclass(frozen=True)
class Ctx:
    """Per-call settings: compute dtype and dropout RNG (None means deterministic)."""

    dtype: Any = jnp.float32
    rng: jax.Array | None = None

    def dropout(self, x: jax.Array, rate: float, name: str) -> jax.Array:
        if rate <= 0.0 or self.rng is None:
            return x
        # A stable per-site key: the same call site always draws the same mask for a given rng.
        key = jax.random.fold_in(self.rng, zlib.crc32(name.encode()) & 0x7FFFFFFF)
        keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
        return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def param(p: dict, name: str, views: Views, dtype) -> jax.Array:
    """Reads base leaf `p[name]` as the active modules change it (sparse deltas), in `dtype`."""
    w = p[name]
    for v in child(views, name):
        w = v.family.transform_leaf(w, v, name)
    return w.astype(dtype)


def linear(x: jax.Array, p: dict, views: Views, ctx: Ctx, name: str) -> jax.Array:
    """x @ kernel with the active modules applied: input transforms ((IA)^3 on the input), the kernel as
    they change it (sparse deltas), additive updates (LoRA), output transforms ((IA)^3 on the output).

    Each phase runs over the modules in order. Kernels are 2-D `[in, out]`; `name` identifies the
    site for dropout.
    """
    for v in views:
        x = v.family.transform_input(x, v, ctx)
    y = x @ param(p, "kernel", views, ctx.dtype)
    for v in views:
        update = v.family.update(x, v, ctx, name)
        if update is not None:
            y = y + update
    for v in views:
        y = v.family.transform_output(y, v, ctx)
    return y


def adapters(y: jax.Array, views: Views, key: str, ctx: Ctx) -> jax.Array:
    """Applies what the active modules store under `key` to a sub-layer output, in module order
    (bottleneck adapters: stacking, MAD-X style)."""
    for v in child(views, key):
        y = v.family.after_sublayer(y, v, ctx)
    return y


def prompts(views: Views, batch_size: int, dtype) -> jax.Array | None:
    """The soft prompts of the active modules, concatenated in order: [batch, P, embed] or None."""
    parts = [v.family.soft_prompt(v, batch_size, dtype) for v in views]
    parts = [e for e in parts if e is not None]
    return jnp.concatenate(parts, axis=1) if parts else None
