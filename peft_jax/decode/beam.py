"""Beam search, as Hugging Face `transformers` does it (4.50+ / 5.x).

The 2K best candidates per row, finished hypotheses kept in a separate top-K, a
hypothesis's score is its sum of log-probabilities divided by a length penalty,
and the same early-stopping rule. The length penalty is HF's `len ** alpha`
(len = generated tokens, EOS included), which is what the XL-Sum paper used
through HF `generate` (alpha = 0.6); `length_penalty_form="gnmt"` switches to
T5X / Wu et al.'s `((5 + len) / 6) ** alpha`. `early_stopping` follows HF: False
(default: stop when the best running beam, scored at the current length, cannot
beat the worst kept hypothesis), True (stop when K hypotheses are kept) or
"never" (with alpha > 0, score the running beam at the maximum length).

Beams of row b occupy rows b*K .. b*K+K-1, so a data-axis sharding of the batch
stays aligned after beam expansion; the model's `expand_beams` lays its state out
that way.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from peft_jax.decode.sequences import block_ngrams, continuation, lengths
from peft_jax.decode.settings import DecodeSettings
from peft_jax.peft.module import PeftModule

# HF's "very unlikely" score: added to exclude a candidate without producing NaNs.
NEG = -1.0e9


def expand_peft(peft, k: int):
    """Repeats each row of batched modules k times, so beam b*k+j of row b uses module b."""
    if peft is None or k == 1:
        return peft
    rep = lambda m: m.replace(params=jax.tree.map(lambda x: jnp.repeat(x, k, axis=0), m.params)) if m.batched else m
    return rep(peft) if isinstance(peft, PeftModule) else [rep(m) for m in peft]


def _gather(x_BxKx, idx_BxJ):
    """x[b, idx[b, j]] for arrays with batch and beam leading dims."""
    idx = idx_BxJ.reshape(idx_BxJ.shape + (1,) * (x_BxKx.ndim - 2))
    return jnp.take_along_axis(x_BxKx, idx, axis=1)


def _length_penalty(s: DecodeSettings, length):
    """The divisor of a hypothesis's log-prob: len ** alpha (HF) or ((5 + len) / 6) ** alpha (GNMT, T5X)."""
    length = jnp.maximum(length, 1).astype(jnp.float32)  # prompt steps have no length; they never score
    base = length if s.length_penalty_form == "hf" else (5.0 + length) / 6.0
    return base ** s.length_penalty


def top_k_flat(scores_BxKxV, n: int):
    """`lax.top_k` of the flattened [B, K*V] scores, in two stages: the top n of each beam, then the top
    n of those K*n. Same scores, indices and tie order (lower flat index first), a quarter of the work
    of one top-k over K*V entries."""
    b, k, vocab = scores_BxKxV.shape
    m = min(n, vocab)  # a beam contributes at most n, and at most its whole vocabulary
    per_beam, idx = jax.lax.top_k(scores_BxKxV, m)
    flat_idx = (idx + (jnp.arange(k) * vocab)[None, :, None]).reshape(b, k * m)
    top, sel = jax.lax.top_k(per_beam.reshape(b, k * m), n)
    return top, jnp.take_along_axis(flat_idx, sel, axis=1)


def _beam_candidates(model, s, params, peft, c, prompt_len):
    """Log-probs of all K*V one-token extensions of the running beams; the best 2K per row."""
    t, (b, k, width) = c["t"], c["seqs"].shape
    flat_seqs = c["seqs"].reshape(b * k, width)
    logits, state = model.decode_step(params, c["state"], flat_seqs[:, t][:, None], peft)
    logp = jax.nn.log_softmax(logits[:, 0].astype(jnp.float32), axis=-1)  # HF: log-softmax, then processors
    logp = block_ngrams(logp, flat_seqs, t, s.no_repeat_ngram_size).reshape(b, k, -1)
    vocab = logp.shape[-1]
    forced = t + 1 < prompt_len
    forced_logp = jnp.where(jnp.arange(vocab) == c["seqs"][:, :1, t + 1, None], 0.0, -jnp.inf)
    logp = jnp.where(forced[:, None, None], forced_logp, logp)
    top_scores, top_idx = top_k_flat(logp + c["running"][..., None], 2 * k)
    parent, tok = top_idx // vocab, (top_idx % vocab).astype(jnp.int32)
    top_seqs = _gather(c["seqs"], parent).at[:, :, t + 1].set(tok)
    gen_len = t + 2 - prompt_len  # generated tokens including the candidate one
    hits = ((tok == s.eos_id) | (gen_len >= s.max_decode_len)[:, None]) & ~forced[:, None]
    return state, top_scores, top_seqs, parent, hits, gen_len


def _beam_finished(s, c, top_scores, top_seqs, hits, gen_len):
    """Merges newly finished hypotheses among the top K candidates into the kept top K (HF rules)."""
    k = c["fin_scores"].shape[1]
    just = hits & (jnp.arange(2 * k) < k)[None, :]  # only the top K candidates may finish
    cand = top_scores / _length_penalty(s, gen_len)[:, None]
    cand = cand + NEG * ~c["improvable"][:, None] + NEG * ~just
    merged_scores = jnp.concatenate([c["fin_scores"], cand], axis=1)
    _, sel = jax.lax.top_k(merged_scores, k)
    # A done row (K kept with early_stopping=True, no possible improvement, or max length) is frozen;
    # this also covers HF's rule that a row with K kept hypotheses accepts no more under early_stopping=True.
    frozen = c["done"][:, None]
    pick = lambda old, new: jnp.where(frozen.reshape(frozen.shape + (1,) * (old.ndim - 2)), old,
                                      _gather(jnp.concatenate([old, new], axis=1), sel))
    return (pick(c["fin_seqs"], top_seqs), pick(c["fin_scores"], cand), pick(c["fin_flag"], just))


def _still_improvable(s, c, running, fin_scores, fin_flag, gen_len, forced):
    """HF's early-stop heuristic: can the best running beam still beat the worst kept hypothesis?"""
    never = s.early_stopping == "never" and s.length_penalty > 0
    hyp_len = jnp.full_like(gen_len, s.max_decode_len) if never else gen_len
    best_possible = running[:, :1] / _length_penalty(s, hyp_len)[:, None]
    worst_kept = jnp.where(fin_flag, jnp.min(fin_scores, axis=1, keepdims=True), NEG)
    improvable = c["improvable"] & jnp.any(best_possible > worst_kept, axis=1)
    return jnp.where(forced, c["improvable"], improvable)  # prompt steps generate nothing to judge


def _beam_body(model, s, params, peft, prompt_len, c):
    """One beam-search step: extend, keep K running beams, update finished hypotheses and stopping state."""
    b, k, _ = c["seqs"].shape
    state, top_scores, top_seqs, parent, hits, gen_len = _beam_candidates(model, s, params, peft, c, prompt_len)
    running, sel = jax.lax.top_k(top_scores + NEG * hits, k)  # finished candidates cannot keep running
    fin_seqs, fin_scores, fin_flag = _beam_finished(s, c, top_scores, top_seqs, hits, gen_len)
    forced = c["t"] + 1 < prompt_len
    improvable = _still_improvable(s, c, running, fin_scores, fin_flag, gen_len, forced)
    done = c["done"] | ~improvable | jnp.all(hits, axis=1)
    if s.early_stopping is True:
        done = done | jnp.all(fin_flag, axis=1)
    flat_parent = (jnp.arange(b)[:, None] * k + _gather(parent, sel)).reshape(-1)
    return {"t": c["t"] + 1, "seqs": _gather(top_seqs, sel), "running": running,
            "state": _reorder(state, flat_parent), "fin_seqs": fin_seqs,
            "fin_scores": fin_scores, "fin_flag": fin_flag, "improvable": improvable, "done": done}


def _reorder(state, flat_parent_N):
    """Moves each beam's state to its chosen parent's. Leaves with one row per example (the encoder's
    cross-attention K/V, kept once per row by `expand_beams`) are the same for all of a row's beams
    and stay where they are."""
    n = flat_parent_N.shape[0]
    return jax.tree.map(lambda x: x[flat_parent_N] if x.shape[0] == n else x, state)


def beam_search(model, s: DecodeSettings, params, peft, state, seqs, prompt_len, start=0):
    """Beam search over K beams per row from position `start` (where the model's state sits); the state
    and batched modules are repeated per beam."""
    b, width = seqs.shape
    k = s.num_beams
    beams = jnp.repeat(seqs[:, None], k, axis=1)
    # Only beam 0 starts alive, so the first step does not pick the same token K times.
    running = jnp.where(jnp.arange(k)[None, :] == 0, 0.0, NEG) * jnp.ones((b, 1), jnp.float32)
    carry = {"t": jnp.asarray(start, jnp.int32), "seqs": beams, "running": running,
             "state": model.expand_beams(state, k), "fin_seqs": beams,
             "fin_scores": jnp.full((b, k), NEG, jnp.float32), "fin_flag": jnp.zeros((b, k), bool),
             "improvable": jnp.ones((b,), bool), "done": jnp.zeros((b,), bool)}
    body = functools.partial(_beam_body, model, s, params, expand_peft(peft, k), prompt_len)
    carry = jax.lax.while_loop(lambda c: (c["t"] < width - 1) & ~jnp.all(c["done"]), body, carry)
    tokens = jax.vmap(lambda x: continuation(x, prompt_len, s.max_decode_len), in_axes=1, out_axes=1)(
        carry["fin_seqs"])
    out = {"tokens": tokens[:, 0], "scores": carry["fin_scores"][:, 0], "lengths": lengths(tokens[:, 0], s.eos_id)}
    if s.return_all_beams:
        out.update(beams=tokens, beam_scores=carry["fin_scores"])
    return out
