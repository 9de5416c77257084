"""Bottleneck adapters (Houlsby et al. 2019, Pfeiffer et al. 2020): y + up(act(down(y))) on sub-layer outputs.

Params per slot (`<layer>/mlp_adapter`, `attention_adapter`, `cross_adapter`): down [d, k],
down_bias [k], up [k, d], up_bias [d], with up = 0 at init so a fresh adapter is the identity.
Composition: `param` sums every parameter (cross terms through the non-linearity); `stack` applies
the adapters in order (MAD-X: language adapter, then task adapter), each scaled through `up`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from peft_jax import tree as tu
from peft_jax.peft.errors import CompositionError, PeftConfigError
from peft_jax.peft.families import sites
from peft_jax.peft.families.base import Family, leafwise_sum, require_count, require_positive


@dataclasses.dataclass(frozen=True)
class AdapterConfig:
    """Bottleneck adapters: x + up(act(down(x))) on sub-layer outputs.

    placement 'pfeiffer' puts one adapter after the MLP of each layer; 'houlsby'
    after both attention and MLP. bottleneck = d_model // reduction_factor.
    """

    placement: str = "pfeiffer"
    reduction_factor: int = 16
    activation: str = "relu"
    init_scale: float = 1e-3
    family: str = dataclasses.field(default="adapter", init=False)

    def __post_init__(self):
        require_count("reduction_factor", self.reduction_factor, "adapter")
        require_positive("init_scale", self.init_scale, "adapter")
        if self.placement not in ("pfeiffer", "houlsby"):
            raise PeftConfigError(f"adapter: placement must be pfeiffer|houlsby, got {self.placement!r}")
        if self.activation not in ("relu", "gelu", "silu"):
            raise PeftConfigError(f"adapter: activation must be relu|gelu|silu, got {self.activation!r}")


_ACTIVATIONS = {"relu": jax.nn.relu, "gelu": jax.nn.gelu, "silu": jax.nn.silu}


def _layer_paths(model) -> list[str]:
    """The paths of the model's layers (the parents of their attention blocks)."""
    kernels = sites.kernel_specs(model)
    return sorted({p.split("/attention")[0].split("/self_attention")[0] for p in kernels
                   if p.endswith(("attention/query", "self_attention/query"))})


class AdapterFamily(Family):
    """Bottleneck adapters after the MLP (pfeiffer) or after every sub-layer (houlsby)."""

    name = "adapter"
    config_class = AdapterConfig
    node_keys = frozenset({"down"})
    strategies = ("param", "ties", "dare", "stack")
    kernels = {"param": leafwise_sum}
    scaled_leaves = frozenset({"up", "up_bias"})

    def init(self, model, config: AdapterConfig, rng, params):
        d = model.config.d_model
        k = max(1, d // config.reduction_factor)
        keys = ["mlp_adapter"] if config.placement == "pfeiffer" else ["attention_adapter", "mlp_adapter"]
        out = {}
        for layer in _layer_paths(model):
            cross = ["cross_adapter"] if config.placement == "houlsby" and layer.startswith("decoder/") else []
            for key in keys + cross:
                path = f"{layer}/{key}"
                out[path] = {"down": config.init_scale * jax.random.normal(sites.site_key(rng, path), (d, k)),
                             "down_bias": jnp.zeros((k,)), "up": jnp.zeros((k, d)), "up_bias": jnp.zeros((d,))}
        return tu.unflatten(out)

    def after_sublayer(self, y, view, ctx):
        n = view.node
        act = _ACTIVATIONS[view.module.config.activation]
        down, up = n["down"].astype(ctx.dtype), n["up"].astype(ctx.dtype)
        if view.batched:
            bias = lambda v: sites.expand_batch(v, y.ndim).astype(ctx.dtype)
            h = act(jnp.einsum("b...d,bdk->b...k", y, down) + bias(n["down_bias"]))
            return y + jnp.einsum("b...k,bkd->b...d", h, up) + bias(n["up_bias"])
        h = act(y @ down + n["down_bias"].astype(ctx.dtype))
        return y + h @ up + n["up_bias"].astype(ctx.dtype)

    def fit(self, path, node, shapes, config):
        layer, d = path.rsplit("/", 1)[0], node["down"].shape[-2]
        under = {p: s for p, s in shapes.items() if p.startswith(layer + "/")}
        if not under:
            return f"the base has no layer {layer}"
        if not any(d in s for s in under.values()):
            return f"an adapter of width {d} on layer {layer}, whose parameters have shapes {sorted(set(under.values()))}"
        return None

    def plan_facts(self, modules, plan, first_path):
        acts = [m.config.activation for m in modules]
        if len(set(acts)) > 1:
            raise CompositionError(f"adapters with different activations {acts} at parameter {first_path!r}: "
                                   "their parameter sum has no meaning; use strategy 'stack'")
        return {}


FAMILY = AdapterFamily()
