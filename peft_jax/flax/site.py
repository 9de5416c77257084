"""The active modules of one call of a Flax model, and one intercepted layer with them applied unmerged.

`Call` holds the modules (checked against the base with `peft.check_fit` when the call starts) and
records which of their sites the model reached, so that a module part the model never computes with is
an error instead of silently doing nothing. Two kinds of layer:

- `Call.matmul`: layers that contract trailing input axes with the leading kernel axes (`Dense`,
  `DenseGeneral`, `nnx.Linear`, `nnx.LinearGeneral`). The input and output are viewed as matrices
  [..., inputs] / [..., outputs] and every family's own hooks run on them, as inside the peft_jax models
  (`peft.apply.linear`): input transforms, the layer itself, leaf deltas, additive updates (low rank,
  per example for batched modules), output transforms, which scale the kernel's part of the output
  (the bias stays, as `peft.merge` leaves it).
- `Call.folded`: layers whose output is linear in one leaf but not such a matmul (`Einsum`, `Embed`,
  `Embed.attend`): the leaf with the modules folded in (`peft.core.fold_leaf`, as `peft.merge` does),
  and the layer's output plus its operation on the difference.

A fresh module adds exact zeros, so it gives the base's output bit for bit.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import numpy as np

from peft_jax.peft import apply, core, families
from peft_jax.peft.errors import TargetError
from peft_jax.peft.families import sites
from peft_jax.peft.module import PeftModule


def _require_leading(site: str, shape, views) -> None:
    """Refuses modules that read this layer's kernel with input axes other than its leading ones."""
    for v in views:
        if v.family.kernel_view and v.family.is_node(v.node):
            rows = v.family.matrix_shape(v.node, math.prod(shape))[0]
            if not sites.Matrix.of(site, shape, v.module.config, rows=rows).leading:
                raise TargetError(f"{site}: the module's in_axes say the inputs of kernel {tuple(shape)} are not its "
                                  "leading axes, but this layer contracts its input with the leading axes")


def _subtree(params, parts):
    """The dict at `parts` inside a module's params, or None."""
    for part in parts:
        if not isinstance(params, dict) or part not in params:
            return None
        params = params[part]
    return params


@dataclasses.dataclass
class Call:
    """The modules active during one model call, the dropout key, and the module sites reached so far."""

    modules: tuple[PeftModule, ...]
    rng: jax.Array | None = None
    reached: set = dataclasses.field(default_factory=set)

    @classmethod
    def start(cls, base_params, peft, rng: jax.Array | None = None) -> Call:
        """Checks that `peft` (None, a module or several) fits `base_params` and opens a call."""
        core.check_fit(base_params, peft, fingerprints=False)
        return cls(tuple(core.module_list(peft)), rng)

    def finish(self) -> None:
        """Refuses module parts the model never computed with (a layer that is not intercepted, or a leaf of
        a layer that the layer's interception does not read)."""
        paths = {path for m in self.modules for path in families.get(m.family).nodes(m.params)}
        missed = sorted(paths - self.reached)
        if missed:
            raise TargetError(f"the model never applied the module parameters at {missed}: peft_jax.flax applies "
                              "modules at Dense, DenseGeneral, Einsum and Embed layers (linen) and Linear, "
                              "LinearGeneral, Einsum and Embed (nnx), on their kernel or embedding, and only during "
                              "the intercepted call")

    def views(self, site: str) -> apply.Views:
        """The views of the modules that hold something at module path `site`, in module order."""
        parts = site.split("/") if site else []
        out = []
        for m in self.modules:
            node = _subtree(m.params, parts)
            if node is not None:
                out.append(apply.View(node, m))
        return tuple(out)

    # ------------------------------------------------------------------ matmul layers
    def matmul(self, site: str, x, axis, kernel, bias, run: Callable):
        """`run(x)` (the layer itself) with the modules at `site` applied; `axis`: x's contracted axes, in the
        order of the kernel's leading axes."""
        views = self.views(site)
        if not views:
            return run(x)
        _require_leading(site, kernel.shape, views)
        nd, n_in = x.ndim, len(axis)
        axis = tuple(a % nd for a in axis)
        order = [a for a in range(nd) if a not in axis] + list(axis)
        xt = x.transpose(order)
        lead = xt.shape[: nd - n_in]
        rows = math.prod(kernel.shape[:n_in])
        cols = math.prod(kernel.shape) // rows
        x2 = xt.reshape(lead + (rows,))
        ctx = apply.Ctx(dtype=x.dtype, rng=self.rng)
        x2t = x2
        for v in views:
            x2t = v.family.transform_input(x2t, v, ctx)
        y = run(x if x2t is x2 else x2t.reshape(xt.shape).transpose(np.argsort(order)))
        ctx = apply.Ctx(dtype=y.dtype, rng=self.rng)
        y2 = y.reshape(lead + (cols,))
        leaf_views = apply.child(views, "kernel")
        if leaf_views:
            w = kernel
            for v in leaf_views:
                w = v.family.transform_leaf(w, v, "kernel")
            y2 = y2 + x2t @ (w - kernel).reshape(rows, cols).astype(y.dtype)
        for v in views:
            update = v.family.update(x2t, v, ctx, site)
            if update is not None:
                y2 = y2 + update
        part = y2 if bias is None else y2 - bias.reshape(-1).astype(y.dtype)
        scaled = part
        for v in views:
            scaled = v.family.transform_output(scaled, v, ctx)
        if scaled is not part:  # (IA)^3 scales the kernel's part: y + (s - 1) part, so scales of 1 add zeros
            y2 = y2 + (scaled - part)
        self._reach(site, "kernel", views)
        return y2.reshape(y.shape)

    # ------------------------------------------------------------------ other linear layers
    def folded(self, site: str, leaf: str, x, w, run: Callable, op: Callable[[Any, Any], Any]):
        """`run(x)` plus `op(x, w' - w)`, where w' is the layer's leaf `leaf` with the modules folded in."""
        views = self.views(site)
        if not views:
            return run(x)
        w_eff = w
        for v in views:
            family = v.family
            parts = ([(site, v.node)] if family.kernel_view and leaf == "kernel" and family.is_node(v.node) else [])
            child = v.node.get(leaf) if isinstance(v.node, dict) else None
            parts += [(f"{site}/{leaf}", child)] if family.is_node(child) else []
            for path, node in parts:
                if v.batched or not family.mergeable:
                    why = "a batched (per-example) module" if v.batched else f"a {family.name} module"
                    raise TargetError(f"{site}: {why} cannot be applied at a {leaf!r} layer that is not a matmul "
                                      "(Einsum, Embed); merge it or apply it at Dense / DenseGeneral layers")
                w_eff = core.fold_leaf(w_eff, path, node, v.module, +1)
        y = run(x)
        self._reach(site, leaf, views)
        return y + op(x, w_eff - w).astype(y.dtype)

    def _reach(self, site: str, leaf: str, views) -> None:
        """Marks the nodes at `site` and at its leaf `leaf` as applied."""
        self.reached.update({site, f"{site}/{leaf}"})
