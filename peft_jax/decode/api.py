"""`generate` and `score`: checks on the host, then one jitted function per model and setting.

The whole decoding loop is one `jax.jit` of a `lax.while_loop` that stops as
soon as every row is finished; model, method and settings are bound statically
with `functools.partial`, so the traced arguments are only arrays (parameters,
batch, PEFT module, rng) and keep whatever sharding they arrive with.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from peft_jax.decode.beam import beam_search
from peft_jax.decode.sampling import sample_loop
from peft_jax.decode.settings import (DecodeSettings, check_attention, check_ngram_size, check_peft_rows,
                                      make_settings)
from peft_jax.models.base import check_token_ids, first_decode_position, token_array
from peft_jax.models.errors import DecodeError

# Batch fields that hold token ids, checked against the vocabulary at the public entry points.
TOKEN_KEYS = ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens")


def generate(model, params, batch, peft=None, method: str = "greedy", max_decode_len: int = 84, *, rng=None,
             **options) -> dict:
    """Decodes `batch` with `method` in one jitted loop; returns tokens [B, L], scores [B] and lengths [B].

    `options` are the keyword arguments of `make_settings` (temperature, top_k, top_p, num_beams,
    length_penalty, length_penalty_form, early_stopping, no_repeat_ngram_size, eos_id,
    return_all_beams), with the same defaults.
    Encoder-decoder: `batch["encoder_input_tokens"]`; decoding starts from `decoder_start_id`.
    Decoder-only: `batch["decoder_input_tokens"]` holds right-padded prompts (lengths = non-pad
    tokens, or `batch["decoder_prompt_lengths"]`); only the continuation is returned.
    tokens: generated ids, pad after EOS. lengths: generated tokens, EOS included.
    scores: beam search's final hypothesis score (log-prob / length penalty); otherwise the
    sequence log-probability under the model (temperature 1, before any filtering).
    With `return_all_beams`, also `beams` [B, K, L] and `beam_scores` [B, K], best first.
    `peft` may be a module, a list of modules applied together, or batched modules (row b, module b).
    `rng` (a jax.random key) is required by method="sample".
    A decoder-only prompt is read with the attention its module was trained with: a batch carrying
    `decoder_causal_attention` (what `model.prompt_features(..., prefix=True)` builds) attends to it
    bidirectionally, as prefix-LM training did; a module whose metadata records the other attention
    is refused (`DecodeError`), as are token ids outside the vocabulary and empty batches.
    """
    settings = make_settings(model, method, max_decode_len, **options)
    if settings.method == "sample" and rng is None:
        raise DecodeError("method='sample' needs rng (a jax.random key)")
    inputs = model.decode_inputs(batch)
    check_token_ids(batch, TOKEN_KEYS, model.config.vocab_size)
    check_peft_rows(peft, jax.tree.leaves(inputs)[0].shape[0])
    check_attention(peft, batch)
    prompt_width = jax.eval_shape(model.decode_start, inputs).prompt.shape[1]
    check_ngram_size(settings, prompt_width + settings.max_decode_len, prompt_width)
    rng = jax.random.PRNGKey(0) if rng is None else rng  # unused unless sampling
    return _jitted_generate(model, settings)(params, inputs, peft, rng)


def score(model, params, batch, peft=None) -> jax.Array:
    """Per-example sum of log p(decoder_target_tokens) weighted by decoder_loss_weights: float32 [B]."""
    keys = list(model.LOGITS_KEYS) + ["decoder_target_tokens"]
    for key in keys:
        token_array(batch, key)
    check_token_ids(batch, keys, model.config.vocab_size)
    check_attention(peft, batch)
    optional = ("decoder_loss_weights", "decoder_causal_attention")
    inputs = {k: batch[k] for k in keys + [k for k in optional if k in batch]}
    return _jitted_score(model)(params, inputs, peft)


@functools.lru_cache(maxsize=64)
def _jitted_generate(model, settings: DecodeSettings):
    return jax.jit(functools.partial(_generate, model, settings))


@functools.lru_cache(maxsize=16)
def _jitted_score(model):
    return jax.jit(functools.partial(_score, model))


def _score(model, params, batch, peft):
    """Traced body of `score`: teacher-forced log-softmax, gathered at the targets, weighted, summed."""
    logits_BxTxV = model.logits(params, batch, peft)
    targets_BxT = batch["decoder_target_tokens"]
    logp_BxTxV = jax.nn.log_softmax(logits_BxTxV, axis=-1)
    token_logp = jnp.take_along_axis(logp_BxTxV, targets_BxT[..., None], axis=-1)[..., 0]
    weights = batch.get("decoder_loss_weights")
    weights = (targets_BxT != model.config.pad_id) if weights is None else weights
    return jnp.sum(token_logp * weights.astype(jnp.float32), axis=-1)


def _generate(model, s: DecodeSettings, params, inputs, peft, rng):
    """Traced body: sets up the buffer and the model state, runs the chosen loop, extracts continuations."""
    prompt, prompt_len, init_batch = model.decode_start(inputs)
    width = prompt.shape[1] + s.max_decode_len
    # Only positions 0 .. width-2 are ever fed to the model: the last token is produced, never consumed.
    state = model.decode_init(params, init_batch, width - 1, peft)
    seqs = jnp.full((prompt.shape[0], width), s.pad_id, jnp.int32).at[:, :prompt.shape[1]].set(prompt)
    positions = jnp.arange(width)[None, :]
    seqs = jnp.where(positions < prompt_len[:, None], seqs, s.pad_id)  # clear pad-region tokens of ragged prompts
    start = first_decode_position(prompt_len)  # decode_init has read the prompts up to here
    if s.method == "beam":
        return beam_search(model, s, params, peft, state, seqs, prompt_len, start)
    return sample_loop(model, s, params, peft, state, seqs, prompt_len, rng, start)
