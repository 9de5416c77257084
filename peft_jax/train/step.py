"""The pure train and eval steps: gradients with respect to the PEFT parameters only.

`train_step(peft, opt_state, params, batch, rng, *, model, optimizer, ...)`
differentiates the loss with respect to the trainable leaves of the PEFT module
(`trainable`: every floating-point leaf; sparse indices are structure, not
parameters). The base `params` are an input, never differentiated and never
seen by the optimizer. Gradients are accumulated over micro-batches as sums and
divided once by the token count of the whole batch, so k micro-batches give the
gradient of one big batch. A non-finite loss or gradient leaves the module and
optimizer state unchanged and is reported in the metrics (`finite` = 0).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from peft_jax import tree as tu
from peft_jax.peft import Module
from peft_jax.train import host_memory, losses


def _is_float(x) -> bool:
    return jnp.issubdtype(x.dtype, jnp.floating)


def trainable(params: dict) -> dict:
    """The floating-point leaves of a module's params (what gradients and the optimizer see)."""
    return tu.unflatten({k: v for k, v in tu.flatten(params).items() if _is_float(v)})


def frozen(params: dict) -> dict:
    """The non-float leaves (e.g. sparse indices): carried along, never updated."""
    return tu.unflatten({k: v for k, v in tu.flatten(params).items() if not _is_float(v)})


def combine(train: dict, static: dict) -> dict:
    """Inverse of the (trainable, frozen) split."""
    return tu.unflatten({**tu.flatten(static), **tu.flatten(train)})


def _microbatches(batch: dict, k: int) -> dict:
    """[B, ...] -> [k, B/k, ...]; micro-batch i holds rows i, i+k, ... so each stays spread over the data axes."""
    def split(x):
        x = x.reshape((x.shape[0] // k, k) + x.shape[1:])
        return jnp.swapaxes(x, 0, 1)

    return jax.tree.map(split, batch)


def batch_loss(model, params: dict, peft, batch: dict, rng=None, z_loss: float = 0.0,
               stream_head: bool = True) -> tuple[jax.Array, losses.LossSums]:
    """(differentiable sum of nll + z-loss over the batch's weighted tokens, LossSums).

    With `stream_head` and an output projection no PEFT module touches (`model.frozen_head`), the
    loss is streamed over chunks of positions (`losses.head_cross_entropy`) and the [B, T, V] logits
    never exist; otherwise it is `losses.cross_entropy` of the full logits. Both give the same values
    and gradients with respect to the PEFT parameters.
    """
    head = model.frozen_head(params, peft) if stream_head else None
    targets, weights = batch["decoder_target_tokens"], batch["decoder_loss_weights"]
    if head is None:
        logits = model.logits(params, losses.model_inputs(batch), peft, dropout_rng=rng)
        sums = losses.cross_entropy(logits, targets, weights, z_loss)
        return sums.nll + sums.z_loss, sums
    x = model.hidden(params, losses.model_inputs(batch), peft, dropout_rng=rng)
    return losses.head_cross_entropy(x, head, targets, weights, z_loss)


def _grad_sums(train, static, peft: Module, params, batch, rng, total_weight, *, model, z_loss, stream_head):
    """(gradient of the batch's loss sum / total_weight, LossSums) for one micro-batch."""
    def loss_fn(tr):
        module = peft.replace(params=combine(tr, static))
        loss_sum, sums = batch_loss(model, params, module, batch, rng, z_loss, stream_head)
        return loss_sum / total_weight, sums

    (_, sums), grads = jax.value_and_grad(loss_fn, has_aux=True)(train)
    return grads, sums


def loss_and_grads(peft: Module, params: dict, batch: dict, rng: jax.Array, *, model, z_loss: float = 0.0,
                   micro_batches: int = 1, stream_head: bool = True):
    """Gradients w.r.t. `trainable(peft.params)` of the token-mean loss, and the batch's LossSums."""
    train, static = trainable(peft.params), frozen(peft.params)
    # The denominator is known before any forward pass: loss weights do not depend on parameters.
    total_weight = jnp.maximum(jnp.sum(batch["decoder_loss_weights"].astype(jnp.float32)), 1.0)
    grad_fn = functools.partial(_grad_sums, train, static, peft, params, total_weight=total_weight, model=model,
                                z_loss=z_loss, stream_head=stream_head)
    if micro_batches == 1:
        return grad_fn(batch, rng)

    def body(carry, xs):
        i, mb = xs
        grads, sums = grad_fn(mb, jax.random.fold_in(rng, i))
        return jax.tree.map(jnp.add, carry, (grads, sums)), None

    zeros = (jax.tree.map(jnp.zeros_like, train), losses.LossSums(*(jnp.zeros((), jnp.float32),) * 4))
    xs = (jnp.arange(micro_batches), _microbatches(batch, micro_batches))
    return jax.lax.scan(body, zeros, xs)[0]


def train_step(peft: Module, opt_state, params: dict, batch: dict, rng: jax.Array, *, model,
               optimizer: optax.GradientTransformation, z_loss: float = 0.0, micro_batches: int = 1,
               stream_head: bool = True):
    """One optimizer step on the PEFT module: returns (peft, opt_state, metrics)."""
    grads, sums = loss_and_grads(peft, params, batch, rng, model=model, z_loss=z_loss, micro_batches=micro_batches,
                                 stream_head=stream_head)
    train = trainable(peft.params)
    updates, new_opt_state = optimizer.update(grads, opt_state, train)
    new_train = optax.apply_updates(train, updates)
    weight = jnp.maximum(sums.weight, 1.0)
    loss = sums.nll / weight
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(sums.z_loss)
    # A bad step changes nothing, so the state that is kept (and checkpointed) is the last good one.
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    new_train, new_opt_state = keep(new_train, train), keep(new_opt_state, opt_state)
    metrics = {"loss": loss, "z_loss": sums.z_loss / weight, "accuracy": sums.correct / weight,
               "grad_norm": grad_norm, "update_norm": optax.tree.norm(updates), "tokens": sums.weight,
               "finite": finite.astype(jnp.int32)}
    return peft.replace(params=combine(new_train, frozen(peft.params))), new_opt_state, metrics


def eval_step(peft: Module, params: dict, batch: dict, *, model, z_loss: float = 0.0) -> dict:
    """Loss sums of one held-out batch (no dropout), for averaging over an eval set."""
    return batch_loss(model, params, peft, batch, z_loss=z_loss)[1]._asdict()


def opt_state_shardings(optimizer: optax.GradientTransformation, peft: Module, mesh: jax.sharding.Mesh):
    """The sharding of every leaf of `init_opt_state`'s result (the module may be abstract).

    Leaves shaped like a parameter keep the sharding jit propagates from it; the
    rest (step counts, factored moments) are replicated. Every leaf gets a mesh
    sharding, so the state's type is the same before and after a train step
    (no recompilation on the second step).
    """
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

    def on_mesh(s):
        return s if isinstance(s, jax.sharding.NamedSharding) and s.mesh == mesh else replicated

    # Compiled, not run: `peft` may hold ShapeDtypeStructs (the full-size dry run).
    propagated = jax.jit(optimizer.init).lower(trainable(peft.params)).compile().output_shardings
    return jax.tree.map(on_mesh, propagated)


def init_opt_state(optimizer: optax.GradientTransformation, peft: Module, mesh: jax.sharding.Mesh):
    """Optimizer state over the trainable PEFT leaves, sharded on `mesh` (see `opt_state_shardings`)."""
    shardings = opt_state_shardings(optimizer, peft, mesh)
    return jax.jit(optimizer.init, out_shardings=shardings)(trainable(peft.params))


def shardings_of(tree):
    """The sharding of every array of a tree (to reuse as jit in/out shardings)."""
    return jax.tree.map(lambda x: x.sharding, tree)


def jit_train_step(*, model, optimizer, peft_sharding, opt_sharding, params_sharding, batch_sharding,
                   scalar_sharding, z_loss: float = 0.0, micro_batches: int = 1, donate: bool = True,
                   stream_head: bool = True):
    """`train_step` with the configuration bound, jitted with explicit shardings and donation.

    The PEFT module and optimizer state are donated (updated in place); the
    base is not, since the same arrays are reused every step. `scalar_sharding`
    (replicated) places the RNG key and the metrics.
    """
    fn = functools.partial(train_step, model=model, optimizer=optimizer, z_loss=z_loss, micro_batches=micro_batches,
                           stream_head=stream_head)
    return jax.jit(fn, in_shardings=(peft_sharding, opt_sharding, params_sharding, batch_sharding, scalar_sharding),
                   out_shardings=(peft_sharding, opt_sharding, scalar_sharding),
                   donate_argnums=(0, 1) if donate else ())


def compile_step(step_fn, *args) -> None:
    """Compiles the jitted `step_fn` for `args` before its first call, then frees the compiler's leftovers.

    jit keeps the executable, so the first real call does not compile again. Compiling first lets
    `host_memory.release` return what the compiler freed before the step allocates its own buffers,
    which lowers the peak resident memory of a training process (the loop does this for every phase).
    Nothing is executed and nothing is donated.
    """
    step_fn.lower(*args).compile()
    host_memory.release()


def jit_eval_step(*, model, peft_sharding, params_sharding, batch_sharding, out_sharding, z_loss: float = 0.0):
    """`eval_step` jitted with explicit shardings."""
    fn = functools.partial(eval_step, model=model, z_loss=z_loss)
    return jax.jit(fn, in_shardings=(peft_sharding, params_sharding, batch_sharding), out_shardings=out_sharding)
