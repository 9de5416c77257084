"""(IA)^3 (Liu et al. 2022): learned scales on keys and values (output side) and the MLP hidden (input of `wo`).

A fresh module is all ones, so the identity of composition is 1, not 0: `param` gives
1 + sum l_i (s_i - 1) (negation is 2 - s, weight 0 is the base model; the raw sum l_i s_i, what HF
peft does, would double the scale for weights [1, 1]), task vectors are s - 1, and a module stacked
with weight l scales by 1 + l (s - 1).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from peft_jax import tree as tu
from peft_jax.peft.families import sites
from peft_jax.peft.families.base import Family, check_in_axes, require_pattern, weighted_sum


@dataclasses.dataclass(frozen=True)
class IA3Config:
    """(IA)^3: learned scales on keys, values (output side) and the MLP hidden (input of `wo`)."""

    targets: str = r".*attention/(key|value)$|.*mlp/wo$"
    feedforward: str = r".*mlp/wo$"
    in_axes: tuple = ()
    """((target regex, input axes), ...) for N-D kernels whose input axes are not inferred (`sites.Matrix`)."""
    family: str = dataclasses.field(default="ia3", init=False)

    def __post_init__(self):
        require_pattern("targets", self.targets, "ia3")
        require_pattern("feedforward", self.feedforward, "ia3")
        check_in_axes(self.in_axes, "ia3")


def _scale(x: jax.Array, s: jax.Array, batched: bool) -> jax.Array:
    s = s.astype(x.dtype)
    return x * (sites.expand_batch(s, x.ndim) if batched else s)


def _param(plan, P, w, extras):
    # sum l_i s_i + (1 - sum l_i) == 1 + sum l_i (s_i - 1), written so that weights [1] return s bit for bit.
    return jax.tree.map(lambda *xs: weighted_sum(w, xs) + (1.0 - jnp.sum(w)).astype(xs[0].dtype), *P)


class IA3Family(Family):
    """(IA)^3 scales: `ia3_in` on a kernel's input (feed-forward sites), `ia3_out` on its output."""

    name = "ia3"
    config_class = IA3Config
    node_keys = frozenset({"ia3_in", "ia3_out"})
    mergeable = True
    kernel_view = True
    from_tree = True
    strategies = ("param", "ties", "dare", "stack")
    kernels = {"param": _param}
    identity = 1.0
    scaled_leaves = frozenset({"ia3_in", "ia3_out"})
    bench_noise = {"ia3_in": 0.1, "ia3_out": 0.1}

    def init(self, model, config: IA3Config, rng, params):
        targets = sites.match(sites.kernel_shapes(model), config.targets, "ia3 targets")
        out = {}
        for path, matrix in sites.matrices(model, config, targets).items():
            d_in, d_out = matrix.shape2d
            ff = bool(tu.select([path], config.feedforward))
            out[path] = {"ia3_in": jnp.ones((d_in,))} if ff else {"ia3_out": jnp.ones((d_out,))}
        return tu.unflatten(out)

    def transform_input(self, x, view, ctx):
        return _scale(x, view.node["ia3_in"], view.batched) if "ia3_in" in view.node else x

    def transform_output(self, y, view, ctx):
        return _scale(y, view.node["ia3_out"], view.batched) if "ia3_out" in view.node else y

    def fold(self, w, node, config, sign):
        s = node.get("ia3_out", node.get("ia3_in"))
        s = s if sign > 0 else 1.0 / s
        return w * (s[None, :] if "ia3_out" in node else s[:, None])

    def matrix_shape(self, node, size):
        if "ia3_in" in node:
            return node["ia3_in"].shape[-1], size // max(node["ia3_in"].shape[-1], 1)
        return size // max(node["ia3_out"].shape[-1], 1), node["ia3_out"].shape[-1]

    def leaf_axes(self, name, kernel_spec):
        if kernel_spec is None or name not in ("ia3_in", "ia3_out"):
            return None
        return (kernel_spec.axes[0],) if name == "ia3_in" else (kernel_spec.axes[1],)

    def hf_state(self, module, names):
        out = {}
        for path, node in self.nodes(module.params).items():
            # HF peft keeps (IA)^3 vectors as [out, 1] (scales the output) or [1, in] (feed-forward input).
            vec = np.asarray(node.get("ia3_out", node.get("ia3_in")), np.float32)
            out[f"base_model.model.{names[path]}.ia3_l"] = vec[:, None] if "ia3_out" in node else vec[None, :]
        return out


FAMILY = IA3Family()
