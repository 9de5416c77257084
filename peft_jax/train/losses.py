"""Training losses: token cross-entropy with label masking and z-loss, and per-objective batch checks.

Losses are returned as *sums* over the weighted tokens together with the sum
of the weights, so that micro-batches, devices and hosts can be combined
exactly: the mean is taken once, over the whole global batch.

Each model declares the objectives it supports and the batch fields (t5x
names) each needs (`Model.OBJECTIVES`); today:

  span_corruption, seq2seq on the encoder-decoder model:
      encoder_input_tokens, decoder_input_tokens, decoder_target_tokens
      (decoder_loss_weights default to target != pad)
  causal_lm on the decoder-only model:
      decoder_input_tokens, decoder_target_tokens (weights default to target != pad)
  prefix_lm, seq2seq on the decoder-only model:
      decoder_input_tokens, decoder_target_tokens, decoder_causal_attention (the
      bidirectional prefix) and decoder_loss_weights (the prefix is not scored)

Where a function takes `model`, a model, a model class or a family name
('encoder_decoder', 'decoder_only') will do.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from peft_jax.models import Model, model_class

OBJECTIVES = ("span_corruption", "seq2seq", "causal_lm", "prefix_lm")
MODEL_KEYS = ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights",
              "decoder_causal_attention")


class BatchError(ValueError):
    """A batch that lacks a field its objective needs, or whose fields disagree in shape."""


class LossSums(NamedTuple):
    """Sums over the weighted target tokens of one (micro-)batch."""

    nll: jax.Array  # sum of -log p(target)
    z_loss: jax.Array  # sum of z_loss * log(Z)^2
    weight: jax.Array  # sum of the loss weights (number of scored tokens)
    correct: jax.Array  # weighted count of argmax == target


def cross_entropy(logits_BxTxV: jax.Array, targets_BxT: jax.Array, weights_BxT: jax.Array,
                  z_loss: float = 0.0) -> LossSums:
    """Weighted token cross-entropy in float32, plus the PaLM/T5 z-loss on log Z.

    The z-loss (z_loss * log(Z)^2) keeps the softmax normaliser near 1, which
    stabilises bf16 training; 1e-4 is the PaLM value, 0 disables it.
    """
    logits = logits_BxTxV.astype(jnp.float32)
    log_z_BxT = jax.nn.logsumexp(logits, axis=-1)
    target_logit_BxT = jnp.take_along_axis(logits, targets_BxT[..., None].astype(jnp.int32), axis=-1)[..., 0]
    w = weights_BxT.astype(jnp.float32)
    correct = (jnp.argmax(logits, axis=-1) == targets_BxT).astype(jnp.float32)
    return LossSums(nll=jnp.sum((log_z_BxT - target_logit_BxT) * w),
                    z_loss=jnp.sum(z_loss * jnp.square(log_z_BxT) * w),
                    weight=jnp.sum(w), correct=jnp.sum(correct * w))


# Float32 logits per chunk of positions that `head_cross_entropy` aims for (the global batch's B x chunk x V).
CHUNK_BYTES = 128 * 2**20


def head_cross_entropy(x_BxTxD: jax.Array, head, targets_BxT: jax.Array, weights_BxT: jax.Array,
                       z_loss: float = 0.0, chunk: int | None = None) -> tuple[jax.Array, LossSums]:
    """`cross_entropy(head(x))` streamed over chunks of positions, never holding [B, T, V] logits.

    `head` is a `models.layers.Head` (a frozen kernel: no gradient reaches it). Returns
    `(loss_sum, sums)`: `loss_sum` = sums.nll + sums.z_loss is the differentiable output, with the
    gradient with respect to `x` computed chunk by chunk during the forward pass (softmax minus one-hot
    times the kernel), so neither pass keeps more than one chunk of logits; `sums` are statistics (no
    gradient). `chunk` positions per step (None: about CHUNK_BYTES of float32 logits per chunk).
    """
    b, t, _ = x_BxTxD.shape
    vocab = head.kernel.shape[0 if head.transposed else 1]
    if chunk is None:
        chunk = max(1, CHUNK_BYTES // (4 * b * vocab))
    n = math.ceil(t / min(chunk, t))
    chunk = math.ceil(t / n)  # equal chunks, as little padding as possible
    pad = n * chunk - t
    padded = lambda a: jnp.pad(a, [(0, 0), (0, pad)] + [(0, 0)] * (a.ndim - 2))
    loss_sum, nll, z, correct = _fused_head_ce(padded(x_BxTxD), jax.lax.stop_gradient(head.kernel),
                                               padded(targets_BxT.astype(jnp.int32)),
                                               padded(weights_BxT.astype(jnp.float32)),
                                               float(z_loss), bool(head.transposed), head.scale, int(chunk))
    sums = LossSums(nll=nll, z_loss=z, weight=jnp.sum(weights_BxT.astype(jnp.float32)), correct=correct)
    return loss_sum, jax.tree.map(jax.lax.stop_gradient, sums)


def _head_ce_chunks(x, kernel, targets, weights, z_loss, transposed, scale, chunk):
    """Scans the chunks: (loss_sum, nll, z, correct) and d loss_sum / d x."""
    b, t, d = x.shape
    to_chunks = lambda a: jnp.swapaxes(a.reshape((b, t // chunk, chunk) + a.shape[2:]), 0, 1)
    dims = (((2,), (1,)), ((), ())) if transposed else (((2,), (0,)), ((), ()))
    back = (((2,), (0,)), ((), ())) if transposed else (((2,), (1,)), ((), ()))

    def body(carry, xs):
        x_c, t_c, w_c = xs
        xs_c = x_c * jnp.asarray(scale, x_c.dtype) if scale is not None else x_c
        logits = jax.lax.dot_general(xs_c, kernel, dims).astype(jnp.float32)  # [B, c, V]
        top = jnp.max(logits, axis=-1)
        e = jnp.exp(logits - top[..., None])  # one exp per logit serves both the normaliser and the softmax
        total = jnp.sum(e, axis=-1)
        lse = top + jnp.log(total)
        tgt = jnp.take_along_axis(logits, t_c[..., None], axis=-1)[..., 0]
        hit = (tgt >= top).astype(jnp.float32)  # the target attains the maximum logit
        # d/dlogits of w * (lse - logit[target] + z_loss * lse^2) = w * ((1 + 2 z_loss lse) softmax - onehot)
        p = e * (w_c * (1.0 + 2.0 * z_loss * lse) / total)[..., None]
        p = p - jax.nn.one_hot(t_c, logits.shape[-1], dtype=jnp.float32) * w_c[..., None]
        dx = jax.lax.dot_general(p.astype(x_c.dtype), kernel, back)  # [B, c, D]
        if scale is not None:
            dx = dx * jnp.asarray(scale, dx.dtype)
        nll = jnp.sum((lse - tgt) * w_c)
        z = jnp.sum(z_loss * jnp.square(lse) * w_c)
        return tuple(c + v for c, v in zip(carry, (nll, z, jnp.sum(hit * w_c)))), dx

    zero = jnp.zeros((), jnp.float32)
    (nll, z, correct), dx = jax.lax.scan(body, (zero, zero, zero), tuple(map(to_chunks, (x, targets, weights))))
    dx = jnp.swapaxes(dx, 0, 1).reshape(x.shape)
    return (nll + z, nll, z, correct), dx


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7))
def _fused_head_ce(x, kernel, targets, weights, z_loss, transposed, scale, chunk):
    return _head_ce_chunks(x, kernel, targets, weights, z_loss, transposed, scale, chunk)[0]


def _fused_head_ce_fwd(x, kernel, targets, weights, z_loss, transposed, scale, chunk):
    out, dx = _head_ce_chunks(x, kernel, targets, weights, z_loss, transposed, scale, chunk)
    return out, dx


def _fused_head_ce_bwd(z_loss, transposed, scale, chunk, dx, g):
    # Only loss_sum carries a gradient; the kernel is frozen (stop_gradient) and targets/weights are data.
    return (g[0] * dx).astype(dx.dtype), None, None, None


_fused_head_ce.defvjp(_fused_head_ce_fwd, _fused_head_ce_bwd)


def model_contract(model: Model | type[Model] | str) -> type[Model]:
    """The model class that declares objectives and features for `model` (`BatchError` if unknown)."""
    try:
        return model_class(model)
    except ValueError as e:
        raise BatchError(str(e)) from None


def required_keys(model: Model | type[Model] | str, objective: str) -> tuple[str, ...]:
    """The batch fields `objective` needs on `model` (see the module docstring)."""
    if objective not in OBJECTIVES:
        raise BatchError(f"unknown objective {objective!r}; expected one of {OBJECTIVES}")
    cls = model_contract(model)
    if objective not in cls.OBJECTIVES:
        raise BatchError(f"objective {objective!r} does not apply to a {cls.family} model; "
                         f"use one of {tuple(cls.OBJECTIVES)}")
    return cls.OBJECTIVES[objective]


def prepare_batch(batch: dict, model: Model | type[Model] | str, objective: str,
                  pad_id: int = 0) -> dict[str, np.ndarray]:
    """Checks a host batch for `objective` and returns only the fields the model and loss read.

    Missing loss weights are derived from padding where that is unambiguous.
    Packed batches (segment ids) are refused: the models have no segment-aware
    attention, so packed examples would attend to each other.
    """
    missing = [k for k in required_keys(model, objective) if k not in batch]
    if missing:
        raise BatchError(f"{objective} batch for a {model_contract(model).family} model lacks fields {missing}; "
                         f"it has {sorted(batch)}")
    packed = sorted(k for k in batch if k.endswith("_segment_ids"))
    if packed:
        raise BatchError(f"batch is packed ({packed}): the models do not mask attention between packed "
                         "examples; disable packing in the data pipeline")
    out = {k: np.asarray(batch[k]) for k in MODEL_KEYS if k in batch}
    if "decoder_loss_weights" not in out:
        out["decoder_loss_weights"] = (out["decoder_target_tokens"] != pad_id).astype(np.float32)
    shape = out["decoder_target_tokens"].shape
    for k in ("decoder_input_tokens", "decoder_loss_weights", "decoder_causal_attention"):
        if k in out and out[k].shape != shape:
            raise BatchError(f"batch field {k} has shape {out[k].shape}, expected {shape} "
                             "(the shape of decoder_target_tokens)")
    return out


def model_inputs(batch: dict) -> dict:
    """The fields `model.logits` reads (targets and weights stay with the loss)."""
    return {k: v for k, v in batch.items() if k in ("encoder_input_tokens", "decoder_input_tokens",
                                                     "decoder_causal_attention")}
