"""Jitted decoding (greedy, sampling, beam search) and per-example scoring, for both model families.

  out = generate(model, params, batch, peft=module, method="beam", max_decode_len=84,
                 num_beams=4, length_penalty=0.6, no_repeat_ngram_size=2)   # XL-Sum settings
  out["tokens"]   int32 [B, L], pad after EOS;  out["scores"]  float32 [B]
  loglik = score(model, params, batch, peft=module)                        # float32 [B]

The whole decoding loop is one `jax.jit` of a `lax.while_loop` that stops as
soon as every row is finished; model, method and settings are bound statically
with `functools.partial`, so the traced arguments are only arrays (parameters,
batch, PEFT module, rng) and keep whatever sharding they arrive with. Beams of
row b occupy rows b*K .. b*K+K-1, so a data-axis sharding of the batch stays
aligned after beam expansion.

Sequences live in one token buffer of width P + L: the "prompt" (the decoder
start token for encoder-decoder models, the right-padded prompt for
decoder-only models) followed by L generated positions. Decoder-only prompts
are consumed token by token with the next prompt token forced (t5x-style), which
is exact for prompts of different lengths in one batch; only the continuation
is returned.

Beam search reproduces Hugging Face `transformers` beam search (4.50+ / 5.x):
the 2K best candidates per row, finished hypotheses kept in a separate top-K,
a hypothesis's score is its sum of log-probabilities divided by a length
penalty, and the same early-stopping rule. The length penalty is HF's
`len ** alpha` (len = generated tokens, EOS included), which is what the XL-Sum
paper used through HF `generate` (alpha = 0.6); `length_penalty_form="gnmt"`
switches to T5X / Wu et al.'s `((5 + len) / 6) ** alpha`. `early_stopping`
follows HF: False (default: stop when the best running beam, scored at the
current length, cannot beat the worst kept hypothesis), True (stop when K
hypotheses are kept) or "never" (with alpha > 0, score the running beam at the
maximum length). No-repeat-n-gram blocking bans, as in HF, any token that would
repeat an n-gram of the whole sequence, the decoder-only prompt (or the T5
decoder start token) included.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from peft_jax.peft.module import Module

METHODS = ("greedy", "sample", "beam")
# HF's "very unlikely" score: added to exclude a candidate without producing NaNs.
NEG = -1.0e9


class DecodeError(ValueError):
    """A decoding argument or batch is invalid."""


@dataclasses.dataclass(frozen=True)
class DecodeSettings:
    """Static decoding configuration; hashable, so jitted functions are cached per setting."""

    method: str
    max_decode_len: int
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    num_beams: int = 4
    length_penalty: float = 0.6
    length_penalty_form: str = "hf"
    early_stopping: Any = False
    no_repeat_ngram_size: int = 0
    eos_id: int = 1
    pad_id: int = 0
    return_all_beams: bool = False


# ------------------------------------------------------------------ validation
def _check_int(name: str, value, minimum: int):
    """An int (not a bool) >= minimum."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise DecodeError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_sampling(temperature, top_k, top_p):
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature >= 0):
        raise DecodeError(f"temperature must be a finite number >= 0, got {temperature!r}")
    _check_int("top_k", top_k, 0)
    if not (isinstance(top_p, (int, float)) and 0.0 < top_p <= 1.0):
        raise DecodeError(f"top_p must be in (0, 1], got {top_p!r}")


def _check_beam(num_beams, length_penalty, length_penalty_form, early_stopping):
    _check_int("num_beams (beam size)", num_beams, 1)
    if not (isinstance(length_penalty, (int, float)) and math.isfinite(length_penalty)):
        raise DecodeError(f"length_penalty must be a finite number, got {length_penalty!r}")
    if length_penalty_form not in ("hf", "gnmt"):
        raise DecodeError(f"length_penalty_form must be 'hf' or 'gnmt', got {length_penalty_form!r}")
    if not (early_stopping is True or early_stopping is False or early_stopping == "never"):
        raise DecodeError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")


def make_settings(model, method: str, max_decode_len: int, *, temperature=1.0, top_k=0, top_p=1.0, num_beams=4,
                  length_penalty=0.6, length_penalty_form="hf", early_stopping=False, no_repeat_ngram_size=0,
                  eos_id=None, return_all_beams=False) -> DecodeSettings:
    """Validated `DecodeSettings`; sampling at temperature 0 is greedy decoding."""
    if method not in METHODS:
        raise DecodeError(f"unknown decoding method {method!r}; expected one of {METHODS}")
    _check_int("max_decode_len (decode length)", max_decode_len, 1)
    _check_sampling(temperature, top_k, top_p)
    _check_beam(num_beams, length_penalty, length_penalty_form, early_stopping)
    _check_int("no_repeat_ngram_size", no_repeat_ngram_size, 0)
    c = model.config
    eos_id = c.eos_id if eos_id is None else eos_id
    _check_int("eos_id", eos_id, 0)
    if eos_id >= c.vocab_size:
        raise DecodeError(f"eos_id {eos_id} is outside the vocabulary (vocab_size={c.vocab_size})")
    if method == "sample" and temperature == 0:
        method = "greedy"  # the limit of sampling as temperature -> 0
    return DecodeSettings(method, int(max_decode_len), float(temperature), int(top_k), float(top_p), int(num_beams),
                          float(length_penalty), length_penalty_form, early_stopping, int(no_repeat_ngram_size),
                          int(eos_id), int(c.pad_id), bool(return_all_beams))


def _token_array(batch, key: str) -> jax.Array:
    """batch[key], checked to be a 2-D integer array."""
    if not isinstance(batch, dict) or key not in batch:
        got = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise DecodeError(f"batch needs {key!r} (int [batch, length]); got {got}")
    x = batch[key]
    if getattr(x, "ndim", None) != 2 or not jnp.issubdtype(x.dtype, jnp.integer):
        raise DecodeError(f"batch[{key!r}] must be a 2-D integer array, got "
                          f"{getattr(x, 'dtype', type(x).__name__)} {getattr(x, 'shape', '')}")
    return x


def _prompt_lengths(model, batch, tokens) -> jax.Array:
    """Per-row decoder-only prompt lengths: `decoder_prompt_lengths` or the count of non-pad tokens."""
    explicit = "decoder_prompt_lengths" in batch
    if explicit:
        lengths = jnp.asarray(batch["decoder_prompt_lengths"], jnp.int32)
        if lengths.shape != tokens.shape[:1]:
            raise DecodeError(f"decoder_prompt_lengths has shape {lengths.shape}, expected ({tokens.shape[0]},)")
    else:
        lengths = jnp.sum(tokens != model.config.pad_id, axis=1, dtype=jnp.int32)
    # Without explicit lengths, a pad before a real token means left padding or a hole: refuse it.
    holes = jnp.any((jnp.arange(tokens.shape[1])[None, :] < lengths[:, None]) & (tokens == model.config.pad_id))
    lo, hi, bad = (int(v) for v in jax.device_get((jnp.min(lengths), jnp.max(lengths), holes)))
    if lo < 1 or hi > tokens.shape[1]:
        raise DecodeError(f"decoder-only prompts need 1..{tokens.shape[1]} tokens per row (a BOS token at least); "
                          f"got lengths in [{lo}, {hi}]")
    if bad and not explicit:
        raise DecodeError("decoder_input_tokens must hold right-padded prompts (pad only after the prompt); "
                          "pass decoder_prompt_lengths if the pad id occurs inside a prompt")
    return lengths


def _check_peft_rows(peft, batch_size: int):
    """Batched (per-example) modules must have one row per example."""
    modules = [] if peft is None else [peft] if isinstance(peft, Module) else list(peft)
    for i, m in enumerate(modules):
        if isinstance(m, Module) and m.batched:
            rows = jax.tree.leaves(m.params)[0].shape[0]
            if rows != batch_size:
                raise DecodeError(f"batched PEFT module {i} has {rows} rows but the batch has {batch_size}")


def _decode_inputs(model, batch) -> dict:
    """The arrays the jitted decoder needs: encoder tokens or the decoder-only prompt and its lengths."""
    if model.family == "encoder_decoder":
        return {"encoder_input_tokens": _token_array(batch, "encoder_input_tokens")}
    tokens = _token_array(batch, "decoder_input_tokens")
    return {"prompt": tokens, "prompt_lengths": _prompt_lengths(model, batch, tokens)}


# ------------------------------------------------------------------- public API
def generate(model, params, batch, peft=None, method: str = "greedy", max_decode_len: int = 84, *, rng=None,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, num_beams: int = 4,
             length_penalty: float = 0.6, length_penalty_form: str = "hf", early_stopping=False,
             no_repeat_ngram_size: int = 0, eos_id: int | None = None, return_all_beams: bool = False) -> dict:
    """Decodes `batch` with `method` in one jitted loop; returns tokens [B, L], scores [B] and lengths [B].

    Encoder-decoder: `batch["encoder_input_tokens"]`; decoding starts from `decoder_start_id`.
    Decoder-only: `batch["decoder_input_tokens"]` holds right-padded prompts (lengths = non-pad
    tokens, or `batch["decoder_prompt_lengths"]`); only the continuation is returned.
    tokens: generated ids, pad after EOS. lengths: generated tokens, EOS included.
    scores: beam search's final hypothesis score (log-prob / length penalty); otherwise the
    sequence log-probability under the model (temperature 1, before any filtering).
    With `return_all_beams`, also `beams` [B, K, L] and `beam_scores` [B, K], best first.
    `peft` may be a module, a list of modules applied together, or batched modules (row b, module b).
    """
    settings = make_settings(model, method, max_decode_len, temperature=temperature, top_k=top_k, top_p=top_p,
                             num_beams=num_beams, length_penalty=length_penalty,
                             length_penalty_form=length_penalty_form, early_stopping=early_stopping,
                             no_repeat_ngram_size=no_repeat_ngram_size, eos_id=eos_id,
                             return_all_beams=return_all_beams)
    if settings.method == "sample" and rng is None:
        raise DecodeError("method='sample' needs rng (a jax.random key)")
    inputs = _decode_inputs(model, batch)
    _check_peft_rows(peft, jax.tree.leaves(inputs)[0].shape[0])
    rng = jax.random.PRNGKey(0) if rng is None else rng  # unused unless sampling
    return _jitted_generate(model, settings)(params, inputs, peft, rng)


def score(model, params, batch, peft=None) -> jax.Array:
    """Per-example sum of log p(decoder_target_tokens) weighted by decoder_loss_weights: float32 [B]."""
    keys = ["decoder_input_tokens", "decoder_target_tokens"]
    keys += ["encoder_input_tokens"] if model.family == "encoder_decoder" else []
    for key in keys:
        _token_array(batch, key)
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


# --------------------------------------------------------------- the decoders
def _generate(model, s: DecodeSettings, params, inputs, peft, rng):
    """Traced body: sets up the buffer and the model state, runs the chosen loop, extracts continuations."""
    if model.family == "encoder_decoder":
        enc = inputs["encoder_input_tokens"]
        prompt = jnp.full((enc.shape[0], 1), model.config.decoder_start_id, jnp.int32)
        prompt_len = jnp.ones((enc.shape[0],), jnp.int32)
        init_batch = {"encoder_input_tokens": enc}
    else:
        prompt, prompt_len = inputs["prompt"].astype(jnp.int32), inputs["prompt_lengths"]
        init_batch = {"decoder_input_tokens": prompt}
    width = prompt.shape[1] + s.max_decode_len
    # Only positions 0 .. width-2 are ever fed to the model: the last token is produced, never consumed.
    state = model.decode_init(params, init_batch, width - 1, peft)
    seqs = jnp.full((prompt.shape[0], width), s.pad_id, jnp.int32).at[:, :prompt.shape[1]].set(prompt)
    positions = jnp.arange(width)[None, :]
    seqs = jnp.where(positions < prompt_len[:, None], seqs, s.pad_id)  # clear pad-region tokens of ragged prompts
    if s.method == "beam":
        return _beam_search(model, s, params, peft, state, seqs, prompt_len)
    return _sample_loop(model, s, params, peft, state, seqs, prompt_len, rng)


def _continuation(seqs_BxS, prompt_len_B, length: int):
    """Tokens after each row's prompt: [B, length]."""
    idx = prompt_len_B[:, None] + jnp.arange(length)[None, :]
    return jnp.take_along_axis(seqs_BxS, idx, axis=1)


def _lengths(tokens_BxL, eos_id: int):
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


def _sample_loop(model, s: DecodeSettings, params, peft, state, seqs, prompt_len, rng):
    """Greedy decoding or ancestral sampling, one token per iteration, until every row is finished."""
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
    carry = {"t": jnp.int32(0), "seqs": seqs, "done": jnp.zeros((b,), bool), "state": state,
             "logprob": jnp.zeros((b,), jnp.float32)}
    carry = jax.lax.while_loop(lambda c: (c["t"] < width - 1) & ~jnp.all(c["done"]), body, carry)
    tokens = _continuation(carry["seqs"], prompt_len, s.max_decode_len)
    return {"tokens": tokens, "scores": carry["logprob"], "lengths": _lengths(tokens, s.eos_id)}


# ------------------------------------------------------------------ beam search
def expand_peft(peft, k: int):
    """Repeats each row of batched modules k times, so beam b*k+j of row b uses module b."""
    if peft is None or k == 1:
        return peft
    rep = lambda m: m.replace(params=jax.tree.map(lambda x: jnp.repeat(x, k, axis=0), m.params)) if m.batched else m
    return rep(peft) if isinstance(peft, Module) else [rep(m) for m in peft]


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


def _expand_beams(model, state, k: int):
    """The decoding state repeated per beam (the model's own `expand_beams` where it shares parts)."""
    if hasattr(model, "expand_beams"):
        return model.expand_beams(state, k)
    return jax.tree.map(lambda x: jnp.repeat(x, k, axis=0), state)


def _beam_search(model, s: DecodeSettings, params, peft, state, seqs, prompt_len):
    """Beam search over K beams per row; the state and batched modules are repeated per beam."""
    b, width = seqs.shape
    k = s.num_beams
    beams = jnp.repeat(seqs[:, None], k, axis=1)
    # Only beam 0 starts alive, so the first step does not pick the same token K times.
    running = jnp.where(jnp.arange(k)[None, :] == 0, 0.0, NEG) * jnp.ones((b, 1), jnp.float32)
    carry = {"t": jnp.int32(0), "seqs": beams, "running": running,
             "state": _expand_beams(model, state, k), "fin_seqs": beams,
             "fin_scores": jnp.full((b, k), NEG, jnp.float32), "fin_flag": jnp.zeros((b, k), bool),
             "improvable": jnp.ones((b,), bool), "done": jnp.zeros((b,), bool)}
    body = functools.partial(_beam_body, model, s, params, expand_peft(peft, k), prompt_len)
    carry = jax.lax.while_loop(lambda c: (c["t"] < width - 1) & ~jnp.all(c["done"]), body, carry)
    tokens = jax.vmap(lambda x: _continuation(x, prompt_len, s.max_decode_len), in_axes=1, out_axes=1)(
        carry["fin_seqs"])
    out = {"tokens": tokens[:, 0], "scores": carry["fin_scores"][:, 0], "lengths": _lengths(tokens[:, 0], s.eos_id)}
    if s.return_all_beams:
        out.update(beams=tokens, beam_scores=carry["fin_scores"])
    return out
