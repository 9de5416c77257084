"""Training losses: token cross-entropy with label masking and z-loss, and per-objective batch checks.

Losses are returned as *sums* over the weighted tokens together with the sum
of the weights, so that micro-batches, devices and hosts can be combined
exactly: the mean is taken once, over the whole global batch.

Objectives and the batch fields (t5x names) they need:

  span_corruption, seq2seq on the encoder-decoder model:
      encoder_input_tokens, decoder_input_tokens, decoder_target_tokens
      (decoder_loss_weights default to target != pad)
  causal_lm on the decoder-only model:
      decoder_input_tokens, decoder_target_tokens (weights default to target != pad)
  prefix_lm, seq2seq on the decoder-only model:
      decoder_input_tokens, decoder_target_tokens, decoder_causal_attention (the
      bidirectional prefix) and decoder_loss_weights (the prefix is not scored)
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

OBJECTIVES = ("span_corruption", "seq2seq", "causal_lm", "prefix_lm")
_FAMILY_OBJECTIVES = {
    "encoder_decoder": ("span_corruption", "seq2seq"),
    "decoder_only": ("causal_lm", "prefix_lm", "seq2seq"),
}
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


def required_keys(family: str, objective: str) -> tuple[str, ...]:
    """The batch fields an objective needs on a model family (see the module docstring)."""
    if objective not in OBJECTIVES:
        raise BatchError(f"unknown objective {objective!r}; expected one of {OBJECTIVES}")
    if family not in _FAMILY_OBJECTIVES:
        raise BatchError(f"unknown model family {family!r}; expected one of {sorted(_FAMILY_OBJECTIVES)}")
    if objective not in _FAMILY_OBJECTIVES[family]:
        raise BatchError(f"objective {objective!r} does not apply to a {family} model; "
                         f"use one of {_FAMILY_OBJECTIVES[family]}")
    keys = ("decoder_input_tokens", "decoder_target_tokens")
    if family == "encoder_decoder":
        return ("encoder_input_tokens",) + keys
    if objective == "causal_lm":
        return keys
    return keys + ("decoder_causal_attention", "decoder_loss_weights")


def prepare_batch(batch: dict, family: str, objective: str, pad_id: int = 0) -> dict[str, np.ndarray]:
    """Checks a host batch for `objective` and returns only the fields the model and loss read.

    Missing loss weights are derived from padding where that is unambiguous.
    Packed batches (segment ids) are refused: the models have no segment-aware
    attention, so packed examples would attend to each other.
    """
    missing = [k for k in required_keys(family, objective) if k not in batch]
    if missing:
        raise BatchError(f"{objective} batch for a {family} model lacks fields {missing}; "
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
