"""How the models consult PEFT modules while they compute.

A model walks its base parameter tree; beside it walks a tuple of `View`s, one
per active module, each pointing at the same path inside its module. A layer
asks its views for what concerns it (LoRA factors next to a kernel, an (IA)^3
scale, an adapter after a sub-layer, a sparse delta on a leaf). Several active
modules compose in order: LoRA updates add, scales multiply, adapters stack.
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from peft_jax.peft.module import Module


@dataclasses.dataclass(frozen=True)
class View:
    """The part of one active module at the current position of the walk."""

    node: Any
    module: Module

    @property
    def batched(self) -> bool:
        return self.module.batched


Views = tuple[View, ...]


def as_views(peft: Module | Sequence[Module] | None) -> Views:
    """Normalises `peft` (None, one module, or modules applied together) to views at the root."""
    if peft is None:
        return ()
    modules = [peft] if isinstance(peft, Module) else list(peft)
    for m in modules:
        if not isinstance(m, Module):
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


def _batch_expand(scale: jax.Array, ndim: int) -> jax.Array:
    """[B, n] -> [B, 1, ..., 1, n] so a per-example vector broadcasts over positions."""
    return scale.reshape(scale.shape[:1] + (1,) * (ndim - 2) + scale.shape[1:])


def param(p: dict, name: str, views: Views, dtype) -> jax.Array:
    """Reads base leaf `p[name]` with any sparse deltas of the active modules added."""
    w = p[name]
    for v in child(views, name):
        if v.batched:
            raise ValueError(f"sparse deltas cannot be batched per example (leaf {name!r}); merge them first")
        flat = w.reshape(-1).astype(jnp.float32)
        # Indices are stored sorted and unique, which lets XLA emit a cheaper scatter.
        w = flat.at[v.node["indices"]].add(v.node["values"].astype(jnp.float32), indices_are_sorted=True,
                                           unique_indices=True).reshape(w.shape)
    return w.astype(dtype)


def _scale(x: jax.Array, s: jax.Array, batched: bool) -> jax.Array:
    s = s.astype(x.dtype)
    return x * (_batch_expand(s, x.ndim) if batched else s)


def linear(x: jax.Array, p: dict, views: Views, ctx: Ctx, name: str) -> jax.Array:
    """x @ kernel with LoRA, (IA)^3 and sparse deltas of the active modules applied.

    Kernels are 2-D `[in, out]`; `name` identifies the site for dropout.
    """
    for v in views:
        if "ia3_in" in v.node:
            x = _scale(x, v.node["ia3_in"], v.batched)
    y = x @ param(p, "kernel", views, ctx.dtype)
    for v in views:
        if "lora_a" in v.node:
            y = y + _lora(x, v, ctx, name)
    for v in views:
        if "ia3_out" in v.node:
            y = _scale(y, v.node["ia3_out"], v.batched)
    return y


def _lora(x: jax.Array, v: View, ctx: Ctx, name: str) -> jax.Array:
    cfg = v.module.config
    a = v.node["lora_a"].astype(ctx.dtype)
    b = v.node["lora_b"].astype(ctx.dtype)
    x = ctx.dropout(x, cfg.dropout, name + "/lora")
    if v.batched:
        h = jnp.einsum("b...i,bir->b...r", x, a)
        return cfg.scaling * jnp.einsum("b...r,bro->b...o", h, b)
    return cfg.scaling * ((x @ a) @ b)


_ACTIVATIONS = {"relu": jax.nn.relu, "gelu": jax.nn.gelu, "silu": jax.nn.silu}


def adapters(y: jax.Array, views: Views, key: str, ctx: Ctx) -> jax.Array:
    """Applies the bottleneck adapters stored under `key`, in module order (stacking, MAD-X style)."""
    for v in child(views, key):
        n = v.node
        act = _ACTIVATIONS[v.module.config.activation]
        down, up = n["down"].astype(ctx.dtype), n["up"].astype(ctx.dtype)
        if v.batched:
            h = act(jnp.einsum("b...d,bdk->b...k", y, down) + _batch_expand(n["down_bias"], y.ndim).astype(ctx.dtype))
            y = y + jnp.einsum("b...k,bkd->b...d", h, up) + _batch_expand(n["up_bias"], y.ndim).astype(ctx.dtype)
        else:
            h = act(y @ down + n["down_bias"].astype(ctx.dtype))
            y = y + h @ up + n["up_bias"].astype(ctx.dtype)
    return y


def prompts(views: Views, batch_size: int, dtype) -> jax.Array | None:
    """The soft prompts of the active modules, concatenated in order: [batch, P, embed] or None."""
    parts = []
    for v in child(views, "prompt"):
        e = v.node["embedding"].astype(dtype)
        parts.append(e if v.batched else jnp.broadcast_to(e, (batch_size,) + e.shape))
    return jnp.concatenate(parts, axis=1) if parts else None
