"""A position in a model's computation, with everything a layer needs there.

A `Scope` keeps together what a layer would otherwise walk in parallel: the base
parameters at the current path, the views of the active PEFT modules at the same
path (`apply.as_views` / `apply.child`), the site name that keys dropout masks,
and the per-call context (compute dtype, dropout rng). A layer asks for a
sub-scope once and lets it apply the modules:

    s = scope.child("query")
    y = s.linear(x)                      # LoRA, (IA)^3 and sparse deltas of every active module

The site name normally follows the parameter path, but a child may be given a
different one (`child("encoder_decoder_attention", "cross")`): dropout masks are
drawn from a hash of the site name, so a name fixes which mask a site draws.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from peft_jax.peft import apply, core


@dataclasses.dataclass(frozen=True, eq=False)
class Scope:
    """Base parameters, active-module views, site name and call context at one point of a model."""

    params: Any
    views: apply.Views
    name: str
    ctx: apply.Ctx

    @classmethod
    def root(cls, params: dict, peft, dtype, dropout_rng: jax.Array | None = None) -> Scope:
        """The scope of a whole model call: `peft` is None, a module or modules applied together.

        Every model call starts here, so this is where a module meets its base: `core.check_fit` refuses a
        module with a site the base lacks or of another shape (shapes only: it runs once per trace)."""
        views = apply.as_views(peft)
        if views:
            core.check_fit(params, peft, fingerprints=False)
        return cls(params, views, "", apply.Ctx(dtype=dtype, rng=dropout_rng))

    def child(self, key: str, name: str | None = None) -> Scope:
        """The scope of `params[key]`, named `<this name>/<name or key>`."""
        return Scope(self.params[key], apply.child(self.views, key), self.site(key if name is None else name),
                     self.ctx)

    def site(self, part: str) -> str:
        """The site name `part` below this scope."""
        return f"{self.name}/{part}" if self.name else part

    @property
    def dtype(self):
        return self.ctx.dtype

    @property
    def active(self) -> bool:
        """Whether some active module has parameters at this path."""
        return bool(self.views)

    def param(self, key: str, dtype=None) -> jax.Array:
        """The base leaf `key` with the modules' sparse deltas added, cast to `dtype` (default: compute dtype)."""
        return apply.param(self.params, key, self.views, self.ctx.dtype if dtype is None else dtype)

    def linear(self, x: jax.Array) -> jax.Array:
        """`x @ kernel` of this scope with the active modules applied (this scope's name keys their dropout)."""
        return apply.linear(x, self.params, self.views, self.ctx, self.name)

    def adapters(self, y: jax.Array, key: str) -> jax.Array:
        """`y` through the bottleneck adapters the modules keep under `key` here."""
        return apply.adapters(y, self.views, key, self.ctx)

    def prompts(self, batch_size: int) -> jax.Array | None:
        """The modules' soft prompts, [batch, P, embed], or None."""
        return apply.prompts(self.views, batch_size, self.ctx.dtype)

    def dropout(self, x: jax.Array, rate: float, part: str) -> jax.Array:
        """Dropout at the site `part` below this scope (identity without a dropout rng)."""
        return self.ctx.dropout(x, rate, self.site(part))
