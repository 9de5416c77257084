"""Greedy decoding and ancestral sampling: one token per step until every row is finished.

Decoding starts at the last prompt position every row shares (the model's
`decode_init` has read the prompts); the remaining prompt tokens of longer rows
are fed with the next prompt token forced (t5x-style), which is exact for
prompts of different lengths in one batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from peft_jax.decode.sequences import block_ngrams, continuation, lengths
from peft_jax.decode.settings import DecodeSettings


def filter_logits(logits_NxV, temperature: float, top_k: int, top_p: float):
    """Temperature, then top-k, then nucleus (top-p) filtering; removed tokens get -inf."""
    logits = logits_NxV / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p < 1.0:
        sorted_desc = -jnp.sort(-logits, axis=-1)
        probs = jax.nn.softmax(sorted_desc, axis=-1)
        # Keep a token while the mass strictly before it is below top_p: the top token always survives.
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        kept = jnp.where(mass_before < top_p, sorted_desc, jnp.inf)
        threshold = jnp.min(kept, axis=-1, keepdims=True)
        logits = jnp.where(logits < threshold, -jnp.inf, logits)
    return logits


def _next_token(s: DecodeSettings, logits_NxV, seqs_NxS, t, key):
    """The chosen next token of each row (greedy or sampled) after n-gram blocking."""
    logits = block_ngrams(logits_NxV, seqs_NxS, t, s.no_repeat_ngram_size)
    if s.method == "greedy":
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = filter_logits(logits, s.temperature, s.top_k, s.top_p)
    return jax.random.categorical(jax.random.fold_in(key, t), logits, axis=-1).astype(jnp.int32)


def sample_loop(model, s: DecodeSettings, params, peft, state, seqs, prompt_len, rng, start=0):
    """Greedy decoding or ancestral sampling, one token per iteration from position `start` (where the
    model's state sits), until every row is finished."""
    width = seqs.shape[1]

    def body(c):
        t = c["t"]
        logits, new_state = model.decode_step(params, c["state"], c["seqs"][:, t][:, None], peft)
        logits = logits[:, 0].astype(jnp.float32)
        forced = t + 1 < prompt_len  # still inside the prompt: the next prompt token is given
        chosen = _next_token(s, logits, c["seqs"], t, rng)
        tok = jnp.where(forced, c["seqs"][:, t + 1], jnp.where(c["done"], s.pad_id, chosen))
        live = ~forced & ~c["done"]
        token_logp = jnp.take_along_axis(jax.nn.log_softmax(logits), tok[:, None], axis=-1)[:, 0]
        at_max = t + 2 - prompt_len >= s.max_decode_len
        done = c["done"] | (live & ((tok == s.eos_id) | at_max))
        return {"t": t + 1, "seqs": c["seqs"].at[:, t + 1].set(tok), "done": done, "state": new_state,
                "logprob": c["logprob"] + jnp.where(live, token_logp, 0.0)}

    b = seqs.shape[0]
    carry = {"t": jnp.asarray(start, jnp.int32), "seqs": seqs, "done": jnp.zeros((b,), bool), "state": state,
             "logprob": jnp.zeros((b,), jnp.float32)}
    carry = jax.lax.while_loop(lambda c: (c["t"] < width - 1) & ~jnp.all(c["done"]), body, carry)
    tokens = continuation(carry["seqs"], prompt_len, s.max_decode_len)
    return {"tokens": tokens, "scores": carry["logprob"], "lengths": lengths(tokens, s.eos_id)}
