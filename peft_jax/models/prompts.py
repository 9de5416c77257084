"""Decoder-only prompts at decoding time: their checks, the prefix-LM attention mask, and the prompt
keys and values the KV cache keeps across steps.

Training (`DecoderModel.logits` on prefix-LM features) and decoding (one prefill of the prompts, then
one step at a time) build their masks with `prefix_lm_mask`, so a prompt is attended at decoding as
its training attended it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from peft_jax.models.errors import DecodeError


def prefix_lm_mask(q_pos_T, k_pos_S, prefix_q_BxT, prefix_k_BxS):
    """[B or 1, T, S] attention mask: causal, plus every prefix position seeing every prefix position
    (t5x's prefix LM); no prefix (None): causal only. Training, prefill and steps share this rule."""
    causal = (k_pos_S[None, :] <= q_pos_T[:, None])[None]
    if prefix_q_BxT is None:
        return causal
    return causal | (prefix_q_BxT[:, :, None] & prefix_k_BxS[:, None, :])


def keep_filled(old, new, filled_B, index, t: int):
    """A layer's cache after a step of t positions at `index`, with positions below `filled` (per row)
    restored from before the step: prompt tokens fed again only to keep rows in step must not replace the
    keys and values the prefill computed with the prefix mask."""
    def merge(old_x, new_x):
        keep = ((index + jnp.arange(t))[None, :] < filled_B[:, None]).reshape(filled_B.shape[0], t, 1, 1)
        kept = jax.lax.dynamic_slice_in_dim(old_x, index, t, axis=1)
        fresh = jax.lax.dynamic_slice_in_dim(new_x, index, t, axis=1)
        return jax.lax.dynamic_update_slice_in_dim(new_x, jnp.where(keep, kept, fresh), index, axis=1)
    return jax.tree.map(merge, old, new)


def prompt_prefix(batch, tokens, lengths) -> jax.Array:
    """bool [B, P]: the prompt positions attended bidirectionally (`decoder_causal_attention`, checked to
    be a run from position 0 inside each prompt), or none."""
    if "decoder_causal_attention" not in batch:
        return jnp.zeros(tokens.shape, bool)
    prefix = jnp.asarray(batch["decoder_causal_attention"])
    if prefix.shape != tokens.shape:
        raise DecodeError(f"decoder_causal_attention has shape {prefix.shape}, expected {tokens.shape} "
                          "(the shape of decoder_input_tokens)")
    prefix = prefix.astype(bool)
    pos = jnp.arange(tokens.shape[1])[None, :]
    run = jnp.sum(prefix, axis=1)
    ragged, outside = jax.device_get((jnp.any(prefix != (pos < run[:, None])), jnp.any(run > lengths)))
    if ragged or outside:
        raise DecodeError("decoder_causal_attention must mark a run of prompt positions from position 0 "
                          "(1 on the prefix, 0 after it, never past a row's prompt length)")
    return prefix


def prompt_lengths(batch, tokens, pad_id: int) -> jax.Array:
    """Per-row prompt lengths: `decoder_prompt_lengths` or the count of non-pad tokens (checked)."""
    explicit = "decoder_prompt_lengths" in batch
    if explicit:
        lengths = jnp.asarray(batch["decoder_prompt_lengths"], jnp.int32)
        if lengths.shape != tokens.shape[:1]:
            raise DecodeError(f"decoder_prompt_lengths has shape {lengths.shape}, expected ({tokens.shape[0]},)")
    else:
        lengths = jnp.sum(tokens != pad_id, axis=1, dtype=jnp.int32)
    # Without explicit lengths, a pad before a real token means left padding or a hole: refuse it.
    holes = jnp.any((jnp.arange(tokens.shape[1])[None, :] < lengths[:, None]) & (tokens == pad_id))
    lo, hi, bad = (int(v) for v in jax.device_get((jnp.min(lengths), jnp.max(lengths), holes)))
    if lo < 1 or hi > tokens.shape[1]:
        raise DecodeError(f"decoder-only prompts need 1..{tokens.shape[1]} tokens per row (a BOS token at least); "
                          f"got lengths in [{lo}, {hi}]")
    if bad and not explicit:
        raise DecodeError("decoder_input_tokens must hold right-padded prompts (pad only after the prompt); "
                          "pass decoder_prompt_lengths if the pad id occurs inside a prompt")
    return lengths
