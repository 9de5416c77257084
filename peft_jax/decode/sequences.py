"""The token buffer both decoding loops share: continuations, lengths and n-gram blocking.

Sequences live in one buffer of width P + L: each row's prompt (right-padded,
`prompt_len` real tokens) followed by L generated positions.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def continuation(seqs_BxS, prompt_len_B, length: int):
    """Tokens after each row's prompt: [B, length]."""
    idx = prompt_len_B[:, None] + jnp.arange(length)[None, :]
    return jnp.take_along_axis(seqs_BxS, idx, axis=1)


def lengths(tokens_BxL, eos_id: int):
    """Generated length up to and including the first EOS (the full width if none)."""
    is_eos = tokens_BxL == eos_id
    return jnp.where(jnp.any(is_eos, axis=1), jnp.argmax(is_eos, axis=1) + 1, tokens_BxL.shape[1]).astype(jnp.int32)


def block_ngrams(scores_NxV, seqs_NxS, t, n: int):
    """Sets to -inf every token that would repeat an n-gram of tokens 0..t (HF NoRepeatNGram semantics)."""
    if n <= 0:
        return scores_NxV
    num, width = seqs_NxS.shape
    windows = width - n + 1
    # The last n-1 tokens (positions t-n+2 .. t) form the prefix the next token would complete.
    suffix = jax.lax.dynamic_slice_in_dim(seqs_NxS, jnp.maximum(t - n + 2, 0), n - 1, axis=1)
    match_NxW = jnp.broadcast_to(jnp.arange(windows)[None, :] + n - 1 <= t, (num, windows))
    for k in range(n - 1):
        match_NxW = match_NxW & (seqs_NxS[:, k:k + windows] == suffix[:, k:k + 1])
    banned_tok = seqs_NxS[:, n - 1:n - 1 + windows]
    rows = jnp.arange(num)[:, None]
    hits = jnp.zeros(scores_NxV.shape, jnp.int32).at[rows, banned_tok].add(match_NxW.astype(jnp.int32))
    return jnp.where((hits > 0) & (t + 1 >= n), -jnp.inf, scores_NxV)
