"""Training a PEFT module on any model, given the user's loss function.

    step = peft_jax.flax.train_step(loss_fn, optax.adam(1e-2))     # jitted once
    opt_state = peft_jax.flax.init_opt_state(optax.adam(1e-2), module)
    module, opt_state, loss = step(module, opt_state, base_params, batch, rng)

`loss_fn(module, base_params, batch, rng) -> scalar` computes the loss however the model is called
(`peft_jax.flax.apply`, `nnx_modules`, or a peft_jax model with `peft=module`). Gradients and optimizer
state exist for the module's floating-point leaves only (`peft_jax.train.step.trainable`); the base is
an input that is never differentiated, so it comes out of training bit for bit as it went in. A step
whose loss or gradients are not finite leaves the module and optimizer state unchanged, as the
training loop's step does.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from peft_jax.peft.module import PeftModule
from peft_jax.train.step import combine, frozen, trainable


def init_opt_state(optimizer: optax.GradientTransformation, module: PeftModule):
    """The optimizer state of a module's trainable leaves."""
    return optimizer.init(trainable(module.params))


def train_step(loss_fn: Callable, optimizer: optax.GradientTransformation) -> Callable:
    """A jitted `step(module, opt_state, base_params, batch, rng) -> (module, opt_state, loss)`."""

    def step(module: PeftModule, opt_state, base_params, batch, rng):
        train, static = trainable(module.params), frozen(module.params)

        def loss_of(tr):
            return loss_fn(module.replace(params=combine(tr, static)), base_params, batch, rng)

        loss, grads = jax.value_and_grad(loss_of)(train)
        updates, new_state = optimizer.update(grads, opt_state, train)
        new_train = optax.apply_updates(train, updates)
        finite = jnp.isfinite(loss) & jnp.all(jnp.array([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
        return module.replace(params=combine(keep(new_train, train), static)), keep(new_state, opt_state), loss

    return jax.jit(step)
