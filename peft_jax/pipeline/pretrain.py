"""Full-parameter pre-training of a small base on unlabeled multilingual text (the demo's first stage).

The real experiment starts from a released mT5 / decoder checkpoint; the
embedded default has none, so it pre-trains a tiny mT5-style model with span
corruption on the synthetic world's six languages. This is the only place where
base weights are trained; everything after it trains PEFT modules only.
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from peft_jax.train.losses import cross_entropy


def _loss(params, batch, model):
    logits = model.logits(params, batch)
    sums = cross_entropy(logits, batch["decoder_target_tokens"], batch["decoder_loss_weights"])
    return sums.nll / jnp.maximum(sums.weight, 1.0)


@functools.partial(jax.jit, static_argnames=("model", "optimizer"), donate_argnums=(0, 1))
def _step(params, opt_state, batch, *, model, optimizer):
    loss, grads = jax.value_and_grad(_loss)(params, batch, model)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


def pretrain(model, params: dict, batches, *, steps: int, learning_rate: float, warmup: int = 100,
             weight_decay: float = 0.01, log_every: int = 100, log=print) -> tuple[dict, list[tuple[int, float]]]:
    """AdamW with warmup + cosine decay over all base parameters; returns (params, [(step, loss)])."""
    schedule = optax.warmup_cosine_decay_schedule(0.0, learning_rate, min(warmup, steps // 2), steps,
                                                  learning_rate * 0.05)
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=weight_decay))
    opt_state = optimizer.init(params)
    params = jax.tree.map(jnp.array, params)  # own copies: the step donates its inputs
    curve, start, running = [], time.time(), []
    for step in range(1, steps + 1):
        batch = {k: jnp.asarray(v) for k, v in next(batches).items()}
        params, opt_state, loss = _step(params, opt_state, batch, model=model, optimizer=optimizer)
        running.append(loss)
        if step % log_every == 0 or step == steps:
            mean = float(np.mean(jax.device_get(running)))
            curve.append((step, mean))
            running = []
            log(f"  pretrain step {step}/{steps}  loss {mean:.3f}  ({time.time() - start:.0f}s)")
    return params, curve
