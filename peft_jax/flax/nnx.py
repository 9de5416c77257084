"""PEFT modules applied unmerged to an NNX model.

    module = peft.init(nnx.state(model, nnx.Param), peft.LoraConfig(targets=r".*attn/(query|value)"), key)
    with peft_jax.flax.nnx_modules(model, module):
        logits = model(tokens)

NNX has no method interceptor, so while such a block is open the `__call__` of `nnx.Linear`,
`nnx.LinearGeneral`, `nnx.Einsum` and `nnx.Embed` (and `Embed.attend`) are wrapped: an instance
that belongs to the model given to the block, at a path holding a module part, is computed with the
modules applied (`site.Call`); any other instance, or any call outside a block, runs the original
method. Instances are recognised by identity, so under `nnx.jit` / `nnx.split` open the block inside
the traced function, on the model object that is called there.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import threading

import jax
import jax.numpy as jnp
from flax import nnx

from peft_jax.flax.site import Call
from peft_jax.peft.errors import TargetError

_METHODS = {nnx.Linear: ("__call__",), nnx.LinearGeneral: ("__call__",), nnx.Einsum: ("__call__",),
            nnx.Embed: ("__call__", "attend")}
_ACTIVE: contextvars.ContextVar = contextvars.ContextVar("peft_jax_nnx_call", default=None)
_LOCK = threading.Lock()
_ORIGINALS: dict = {}
_DEPTH = [0]


def _leaf(m, name):
    v = getattr(m, name, None)
    return None if v is None else v.get_value() if hasattr(v, "get_value") else v.value


def _site(call: Call, site: str, m, method: str, orig, args, kwargs):
    """One call of a wrapped layer `m` at module path `site`."""
    run = lambda x: orig(m, x, *args[1:], **kwargs)
    if isinstance(m, nnx.Embed):
        op = ((lambda ids, d: jnp.take(d, ids, axis=0)) if method == "__call__"
              else (lambda q, d: q @ d.T.astype(q.dtype)))
        return call.folded(site, "embedding", args[0], _leaf(m, "embedding"), run, op)
    if isinstance(m, nnx.Einsum):
        eq = kwargs.get("einsum_str") or (args[1] if len(args) > 1 else None) or m.einsum_str
        return call.folded(site, "kernel", args[0], _leaf(m, "kernel"), run,
                           lambda x, d: jnp.einsum(eq.replace(" ", ""), x, d.astype(x.dtype)))
    if isinstance(m, nnx.LinearGeneral) and m.batch_axis:
        raise TargetError(f"{site}: LinearGeneral with batch_axis is not supported")
    axis = (-1,) if isinstance(m, nnx.Linear) else tuple(m.axis)
    return call.matmul(site, args[0], axis, _leaf(m, "kernel"), _leaf(m, "bias"), run)


def _wrap(method: str, orig):
    @functools.wraps(orig)
    def wrapped(self, *args, **kwargs):
        active = _ACTIVE.get()
        site = None if active is None or not args else active[1].get(id(self))
        if site is None or not active[0].views(site):
            return orig(self, *args, **kwargs)
        return _site(active[0], site, self, method, orig, args, kwargs)

    return wrapped


def _patch(on: bool) -> None:
    """Wraps the layer methods when the first block opens and restores them when the last one closes."""
    with _LOCK:
        _DEPTH[0] += 1 if on else -1
        if on and _DEPTH[0] == 1:
            for cls, names in _METHODS.items():
                for name in names:
                    _ORIGINALS[cls, name] = cls.__dict__[name]
                    setattr(cls, name, _wrap(name, cls.__dict__[name]))
        elif not on and _DEPTH[0] == 0:
            for (cls, name), orig in _ORIGINALS.items():
                setattr(cls, name, orig)
            _ORIGINALS.clear()


@contextlib.contextmanager
def modules(model: nnx.Module, peft, *, dropout_rng: jax.Array | None = None):
    """Within the block, calls of `model` use `peft` unmerged; checks the fit on entry and on exit that the
    model reached every part of the modules."""
    call = Call.start(nnx.state(model, nnx.Param), peft, dropout_rng)
    paths = {id(node): "/".join(map(str, path)) for path, node in nnx.iter_graph(model)
             if isinstance(node, tuple(_METHODS))}
    token = _ACTIVE.set((call, paths))
    _patch(True)
    try:
        yield call
    finally:
        _patch(False)
        _ACTIVE.reset(token)
    call.finish()
