"""PEFT modules applied unmerged to a linen model, through `flax.linen.intercept_methods`.

    module = peft.init(variables["params"], peft.LoraConfig(targets=r".*attn/(query|value)", rank=4), key)
    logits = peft_jax.flax.apply(model, variables, tokens, peft=module)

Every call of a `Dense`, `DenseGeneral`, `Einsum` or `Embed` (and `Embed.attend`) whose module path
('/'-joined `Module.path`, the path of its parameters under `params`) holds a module part is computed
with the modules applied (`site.Call`); other layers run untouched. `peft` is None, a module, several
modules applied together in order, or batched modules (leading axis = the batch, row b uses module b).
"""

from __future__ import annotations

import contextlib

import flax.linen as nn
import jax
import jax.numpy as jnp

from peft_jax.flax.site import Call
from peft_jax.peft.errors import TargetError

_LAYERS = (nn.Dense, nn.DenseGeneral, nn.Einsum, nn.Embed)


def _axes(axis) -> tuple[int, ...]:
    return tuple(axis) if isinstance(axis, (tuple, list)) else (axis,)


def _intercept(call: Call):
    """The linen interceptor that sends the layers holding module parts through `call`."""

    def intercept(next_fun, args, kwargs, context):
        m = context.module
        if not isinstance(m, _LAYERS) or context.method_name not in ("__call__", "attend") or not args:
            return next_fun(*args, **kwargs)
        site = "/".join(m.path)
        if not call.views(site):
            return next_fun(*args, **kwargs)
        p = m.variables["params"]
        run = lambda x: next_fun(x, *args[1:], **kwargs)
        if isinstance(m, nn.Embed):
            op = ((lambda ids, d: jnp.take(d, ids, axis=0)) if context.method_name == "__call__"
                  else (lambda q, d: q @ d.T.astype(q.dtype)))
            return call.folded(site, "embedding", args[0], p["embedding"], run, op)
        if isinstance(m, nn.Einsum):
            eq = kwargs.get("einsum_str") or (args[1] if len(args) > 1 else None) or m.einsum_str
            return call.folded(site, "kernel", args[0], p["kernel"], run,
                               lambda x, d: jnp.einsum(eq.replace(" ", ""), x, d.astype(x.dtype)))
        if isinstance(m, nn.DenseGeneral) and m.batch_dims:
            raise TargetError(f"{site}: DenseGeneral with batch_dims is not supported")
        axis = (-1,) if isinstance(m, nn.Dense) else _axes(m.axis)
        return call.matmul(site, args[0], axis, p["kernel"], p.get("bias"), run)

    return intercept


@contextlib.contextmanager
def modules(params, peft, *, dropout_rng: jax.Array | None = None):
    """Within the block, linen models applied with base `params` (the `params` collection) use `peft`.

    Checks that `peft` fits `params` on entry and, on exit, that the model reached every part of it."""
    call = Call.start(params, peft, dropout_rng)
    with nn.intercept_methods(_intercept(call)):
        yield call
    call.finish()


def apply(model: nn.Module, variables, *args, peft=None, dropout_rng: jax.Array | None = None, **kwargs):
    """`model.apply(variables, *args, **kwargs)` with `peft` applied unmerged (LoRA, (IA)^3, sparse deltas).

    `dropout_rng` keys the modules' own dropout (LoRA dropout); the model's rngs go in `rngs=` as usual."""
    with modules(variables["params"], peft, dropout_rng=dropout_rng):
        return model.apply(variables, *args, **kwargs)
