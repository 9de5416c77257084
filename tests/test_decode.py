"""Decoding invariants on tiny random models: cache == recompute, beam search optimality on a toy
chain, per-example modules, sampling limits, HF-equivalent n-gram and top-k/top-p filters, clear errors."""

import dataclasses
import itertools
import math
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers.generation import logits_process as hf_lp

import peft_jax
from peft_jax import decode
from peft_jax import peft as P
from peft_jax.models import DecoderModel, T5Model, get_model

L = 8  # decode length used throughout


def _random_lora(model, seed: int, rank: int = 4):
    """A LoRA module with non-zero B, so it really changes the model."""
    m = P.init(model, P.LoraConfig(rank=rank), jax.random.PRNGKey(seed))
    keys = iter(jax.random.split(jax.random.PRNGKey(100 + seed), 64))
    params = jax.tree_util.tree_map_with_path(
        lambda p, x: 0.3 * jax.random.normal(next(keys), x.shape) if p[-1].key == "lora_b" else x, m.params)
    return m.replace(params=params)


@pytest.fixture(scope="module")
def t5():
    model = get_model("mt5_tiny", vocab_size=64)
    return model, model.init(jax.random.PRNGKey(0))


@pytest.fixture(scope="module")
def palm():
    model = get_model("palm_tiny", vocab_size=64)
    return model, model.init(jax.random.PRNGKey(1))


def _enc_batch(rows=2, seed=0):
    tokens = np.random.RandomState(seed).randint(2, 64, size=(rows, 6))
    tokens[1, 4:] = 0  # a padded source
    return {"encoder_input_tokens": jnp.asarray(tokens)}


# ------------------------------------------------------------- cache == recompute
def _greedy_by_recompute(model, params, peft, batch, prompt, prompt_len, eos):
    """Greedy decoding that recomputes full teacher-forced logits over a fixed-width buffer each step."""
    b = prompt.shape[0]
    width = prompt.shape[1] + L
    buf = np.zeros((b, width), np.int32)
    buf[:, :prompt.shape[1]] = prompt
    logits_fn = jax.jit(lambda tokens: model.logits(params, dict(batch, decoder_input_tokens=tokens), peft))
    done = np.zeros(b, bool)
    for t in range(width - 1):
        nxt = np.asarray(jnp.argmax(logits_fn(jnp.asarray(buf))[:, t], axis=-1))
        for r in range(b):
            if t + 1 < prompt_len[r] or t + 1 - prompt_len[r] >= L:
                continue  # inside the prompt, or the row's continuation is full
            buf[r, t + 1] = 0 if done[r] else nxt[r]
            done[r] |= nxt[r] == eos
    return np.stack([buf[r, prompt_len[r]:prompt_len[r] + L] for r in range(b)])


def test_mt5_greedy_with_kv_cache_equals_full_recompute(t5):
    model, params = t5
    peft = [_random_lora(model, 0), P.init(model, P.PromptConfig(length=3, init="random"), jax.random.PRNGKey(2))]
    batch = _enc_batch()
    out = peft_jax.generate(model, params, batch, peft, method="greedy", max_decode_len=L, eos_id=5)
    ref = _greedy_by_recompute(model, params, peft, batch, np.zeros((2, 1), np.int32), [1, 1], eos=5)
    np.testing.assert_array_equal(np.asarray(out["tokens"]), ref)


def test_decoder_greedy_with_kv_cache_equals_full_recompute_on_ragged_prompts(palm):
    model, params = palm
    peft = _random_lora(model, 1)
    prompt = np.random.RandomState(3).randint(2, 64, size=(3, 5)).astype(np.int32)
    prompt[0, 2:] = 0
    prompt[2, 4:] = 0
    out = peft_jax.generate(model, params, {"decoder_input_tokens": jnp.asarray(prompt)}, peft, max_decode_len=L)
    ref = _greedy_by_recompute(model, params, peft, {}, prompt, [2, 5, 4], eos=model.config.eos_id)
    np.testing.assert_array_equal(np.asarray(out["tokens"]), ref)
    explicit = {"decoder_input_tokens": jnp.asarray(prompt), "decoder_prompt_lengths": jnp.asarray([2, 5, 4])}
    np.testing.assert_array_equal(np.asarray(peft_jax.generate(model, params, explicit, peft, max_decode_len=L)
                                             ["tokens"]), ref)


def test_greedy_score_is_the_sequence_loglikelihood_from_score(t5):
    model, params = t5
    batch = _enc_batch()
    out = decode.generate(model, params, batch, method="greedy", max_decode_len=L, eos_id=5)
    tokens = np.asarray(out["tokens"])
    weights = (np.arange(L)[None, :] < np.asarray(out["lengths"])[:, None]).astype(np.float32)
    inputs = np.concatenate([np.zeros((2, 1), np.int32), tokens[:, :-1]], axis=1)
    scored = peft_jax.score(model, params, dict(batch, decoder_input_tokens=jnp.asarray(inputs),
                                                decoder_target_tokens=jnp.asarray(tokens),
                                                decoder_loss_weights=jnp.asarray(weights)))
    np.testing.assert_allclose(np.asarray(scored), np.asarray(out["scores"]), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------ beam search on a toy chain
@dataclasses.dataclass(frozen=True)
class _ChainConfig:
    vocab_size: int = 5
    pad_id: int = 0
    eos_id: int = 1
    decoder_start_id: int = 0


# Next-token probabilities given the last token (0 start, 1 EOS, 2 a, 3 b, 4 c). Greedy follows
# a, a, a...; the most likely complete sequence is b EOS (0.4 * 0.95 = 0.38).
_CHAIN = np.array([[1e-6, 1e-6, 0.50, 0.40, 0.10],
                   [1e-6, 0.96, 0.01, 0.01, 0.02],
                   [1e-6, 0.30, 0.36, 1e-6, 0.34],
                   [1e-6, 0.95, 0.05, 1e-6, 1e-6],
                   [1e-6, 0.90, 0.05, 0.05, 1e-6]])
_CHAIN = _CHAIN / _CHAIN.sum(axis=1, keepdims=True)


@dataclasses.dataclass(frozen=True)
class _ChainModel:
    """A first-order Markov 'model' implementing the decoding part of the model contract."""

    config: _ChainConfig = _ChainConfig()
    family: str = "encoder_decoder"

    # Decoding starts as for the encoder-decoder (from the start token); every state leaf is per beam.
    decode_inputs = T5Model.decode_inputs
    decode_start = T5Model.decode_start
    expand_beams = DecoderModel.expand_beams

    def decode_init(self, params, batch, max_decode_len, peft=None):
        return {"index": jnp.zeros((batch["encoder_input_tokens"].shape[0],), jnp.int32)}

    def decode_step(self, params, state, tokens_BxT, peft=None):
        logp = jnp.log(jnp.asarray(_CHAIN, jnp.float32))
        return logp[tokens_BxT], {"index": state["index"] + tokens_BxT.shape[1]}


def _exhaustive_best(max_len: int, alpha: float, form: str):
    """Best finished sequence by enumeration in float64: ends in EOS, or has max_len tokens."""
    best = (-math.inf, None)
    for n in range(1, max_len + 1):
        for seq in itertools.product(range(1, 5), repeat=n):
            if 1 in seq[:-1] or (n < max_len and seq[-1] != 1):
                continue
            logp = sum(math.log(_CHAIN[a, b]) for a, b in zip((0,) + seq[:-1], seq))
            penalty = n**alpha if form == "hf" else ((5 + n) / 6) ** alpha
            best = max(best, (logp / penalty, seq))
    return best


@pytest.mark.parametrize("form, alpha", [("hf", 0.0), ("hf", 0.6), ("hf", 3.0), ("gnmt", 3.0)])
def test_beam_search_finds_the_exhaustive_optimum_on_a_markov_chain_where_greedy_fails(form, alpha):
    model, batch = _ChainModel(), {"encoder_input_tokens": jnp.ones((1, 2), jnp.int32)}
    best_score, best_seq = _exhaustive_best(4, alpha, form)
    out = decode.generate(model, {}, batch, method="beam", max_decode_len=4, num_beams=3, length_penalty=alpha,
                          length_penalty_form=form)
    want = list(best_seq) + [0] * (4 - len(best_seq))
    assert np.asarray(out["tokens"])[0].tolist() == want
    np.testing.assert_allclose(float(out["scores"][0]), best_score, rtol=1e-5)
    greedy = decode.generate(model, {}, batch, method="greedy", max_decode_len=4)
    assert np.asarray(greedy["tokens"])[0].tolist() == [2, 2, 2, 2] != want


def test_beam_search_returns_all_kept_hypotheses_best_first():
    model, batch = _ChainModel(), {"encoder_input_tokens": jnp.ones((1, 2), jnp.int32)}
    out = decode.generate(model, {}, batch, method="beam", max_decode_len=4, num_beams=2, length_penalty=0.0,
                          return_all_beams=True)
    assert out["beams"].shape == (1, 2, 4) and out["beam_scores"].shape == (1, 2)
    # b EOS (0.38) is found first; a c EOS (0.5 * 0.34 * 0.9) beats a EOS (0.15) for second place.
    assert np.asarray(out["beams"])[0].tolist() == [[3, 1, 0, 0], [2, 4, 1, 0]]
    np.testing.assert_allclose(np.asarray(out["beam_scores"][0]), np.log([0.38, 0.5 * 0.34 * 0.9]), rtol=1e-4)


# ------------------------------------------------------------- per-example modules
def test_row_b_decoded_with_a_batched_module_equals_row_b_decoded_alone_with_module_b(t5):
    model, params = t5
    modules = [_random_lora(model, 10), _random_lora(model, 11)]
    batch = _enc_batch()
    kw = dict(method="beam", max_decode_len=L, num_beams=3, no_repeat_ngram_size=2, eos_id=5)
    together = decode.generate(model, params, batch, P.batch(modules), **kw)
    for b, m in enumerate(modules):
        alone = decode.generate(model, params, batch, m, **kw)
        np.testing.assert_array_equal(np.asarray(together["tokens"][b]), np.asarray(alone["tokens"][b]))
        np.testing.assert_allclose(float(together["scores"][b]), float(alone["scores"][b]), rtol=1e-5)
    assert not np.array_equal(np.asarray(together["tokens"][0]), np.asarray(
        decode.generate(model, params, batch, modules[1], **kw)["tokens"][0]))


def test_beam_rows_with_ragged_prompts_are_independent_of_their_batch_neighbours(palm):
    model, params = palm
    prompt = np.random.RandomState(4).randint(2, 64, size=(2, 5)).astype(np.int32)
    prompt[1, 3:] = 0
    kw = dict(method="beam", max_decode_len=L, num_beams=3)
    both = decode.generate(model, params, {"decoder_input_tokens": jnp.asarray(prompt)}, **kw)
    swapped = decode.generate(model, params, {"decoder_input_tokens": jnp.asarray(prompt[::-1].copy())}, **kw)
    np.testing.assert_array_equal(np.asarray(both["tokens"]), np.asarray(swapped["tokens"])[::-1])
    np.testing.assert_allclose(np.asarray(both["scores"]), np.asarray(swapped["scores"])[::-1], rtol=1e-5)


SHARDED_SCRIPT = """
import os
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
import peft_jax
from peft_jax import peft as P
from peft_jax.models import get_model
model = get_model("mt5_tiny", vocab_size=64)
params = model.init(jax.random.PRNGKey(0))
mods = [P.init(model, P.LoraConfig(rank=2), jax.random.PRNGKey(i)) for i in range(4)]
batched = P.batch([m.replace(params=jax.tree.map(lambda x: x + 0.3, m.params)) for m in mods])
enc = jnp.asarray(np.random.RandomState(0).randint(2, 64, size=(4, 6)))
mesh = Mesh(np.array(jax.devices()), ("data",))
rows, replicated = NamedSharding(mesh, PartitionSpec("data")), NamedSharding(mesh, PartitionSpec())
for kw in [dict(method="greedy"), dict(method="beam", num_beams=3, no_repeat_ngram_size=2)]:
    one = peft_jax.generate(model, params, {"encoder_input_tokens": enc}, batched, max_decode_len=6, eos_id=5, **kw)
    two = peft_jax.generate(model, jax.device_put(params, replicated),
                            {"encoder_input_tokens": jax.device_put(enc, rows)},
                            batched.replace(params=jax.device_put(batched.params, rows)),
                            max_decode_len=6, eos_id=5, **kw)
    assert np.array_equal(one["tokens"], two["tokens"]), kw
    assert two["tokens"].sharding.is_equivalent_to(rows, 2), two["tokens"].sharding
print("ok")
"""


def test_decoding_sharded_over_the_data_axis_matches_one_device_and_stays_sharded():
    proc = subprocess.run([sys.executable, "-c", SHARDED_SCRIPT], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


# ------------------------------------------------------------------------ sampling
def test_sampling_with_top_k_1_equals_greedy(t5):
    model, params = t5
    batch = _enc_batch()
    greedy = decode.generate(model, params, batch, method="greedy", max_decode_len=L, eos_id=5)
    sampled = decode.generate(model, params, batch, method="sample", max_decode_len=L, eos_id=5, top_k=1,
                              temperature=1.7, rng=jax.random.PRNGKey(3))
    np.testing.assert_array_equal(np.asarray(sampled["tokens"]), np.asarray(greedy["tokens"]))
    np.testing.assert_allclose(np.asarray(sampled["scores"]), np.asarray(greedy["scores"]), rtol=1e-6)


def test_sampling_is_reproducible_for_a_fixed_rng_and_varies_across_rngs(t5):
    model, params = t5
    batch = _enc_batch(rows=4, seed=5)
    run = lambda seed: np.asarray(decode.generate(model, params, batch, method="sample", max_decode_len=L,
                                                  temperature=2.0, rng=jax.random.PRNGKey(seed))["tokens"])
    np.testing.assert_array_equal(run(7), run(7))
    assert not np.array_equal(run(7), run(8))


def test_temperature_zero_is_greedy_and_a_tiny_temperature_samples_the_argmax(t5):
    model, params = t5
    batch = _enc_batch()
    greedy = np.asarray(decode.generate(model, params, batch, max_decode_len=L, eos_id=5)["tokens"])
    zero = decode.generate(model, params, batch, method="sample", temperature=0.0, max_decode_len=L, eos_id=5)
    np.testing.assert_array_equal(np.asarray(zero["tokens"]), greedy)
    cold = decode.generate(model, params, batch, method="sample", temperature=1e-4, max_decode_len=L, eos_id=5,
                           rng=jax.random.PRNGKey(0))
    np.testing.assert_array_equal(np.asarray(cold["tokens"]), greedy)


def test_top_k_and_top_p_filters_keep_the_same_tokens_as_hf_warpers():
    rs = np.random.RandomState(0)
    logits = rs.randn(6, 50).astype(np.float32) * 3
    for temperature, top_k, top_p in [(1.0, 5, 1.0), (0.7, 0, 0.9), (1.3, 10, 0.5), (1.0, 0, 0.05)]:
        ours = np.asarray(decode.filter_logits(jnp.asarray(logits), temperature, top_k, top_p))
        ref = torch.tensor(logits)
        warpers = [hf_lp.TemperatureLogitsWarper(temperature)]
        warpers += [hf_lp.TopKLogitsWarper(top_k)] if top_k else []
        warpers += [hf_lp.TopPLogitsWarper(top_p)] if top_p < 1 else []
        for w in warpers:
            ref = w(None, ref)
        np.testing.assert_array_equal(np.isfinite(ours), torch.isfinite(ref).numpy())
        np.testing.assert_allclose(ours[np.isfinite(ours)], ref.numpy()[np.isfinite(ours)], rtol=1e-6)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_no_repeat_ngram_bans_the_same_tokens_as_hf(n):
    rs = np.random.RandomState(n)
    seqs = rs.randint(0, 6, size=(5, 12)).astype(np.int32)  # small alphabet: many repeats
    scores = rs.randn(5, 6).astype(np.float32)
    for t in range(12):
        ours = np.asarray(decode.block_ngrams(jnp.asarray(scores), jnp.asarray(seqs), t, n))
        ref = hf_lp.NoRepeatNGramLogitsProcessor(n)(torch.tensor(seqs[:, :t + 1]).long(), torch.tensor(scores))
        np.testing.assert_array_equal(ours, ref.numpy())


# -------------------------------------------------------------------------- errors
@pytest.mark.parametrize("kwargs, message", [
    (dict(max_decode_len=0), "decode length"),
    (dict(max_decode_len=-3), "decode length"),
    (dict(method="beam", num_beams=0), "beam size"),
    (dict(method="beam", num_beams=-1), "beam size"),
    (dict(method="nucleus"), "unknown decoding method"),
    (dict(method="sample", top_p=0.0, rng=jax.random.PRNGKey(0)), "top_p"),
    (dict(method="sample", top_p=1.5, rng=jax.random.PRNGKey(0)), "top_p"),
    (dict(method="sample", top_k=-1, rng=jax.random.PRNGKey(0)), "top_k"),
    (dict(method="sample", temperature=-0.5, rng=jax.random.PRNGKey(0)), "temperature"),
    (dict(method="sample"), "needs rng"),
    (dict(no_repeat_ngram_size=-1), "no_repeat_ngram_size"),
    (dict(method="beam", early_stopping="sometimes"), "early_stopping"),
    (dict(method="beam", length_penalty=float("nan")), "length_penalty"),
    (dict(eos_id=64), "outside the vocabulary"),
])
def test_bad_decoding_arguments_raise_clear_errors(t5, kwargs, message):
    model, params = t5
    with pytest.raises(decode.DecodeError, match=message):
        decode.generate(model, params, _enc_batch(), **kwargs)


def test_bad_batches_raise_clear_errors(t5, palm):
    with pytest.raises(decode.DecodeError, match="encoder_input_tokens"):
        decode.generate(*t5, {"inputs": jnp.ones((2, 3), jnp.int32)})
    with pytest.raises(decode.DecodeError, match="2-D integer"):
        decode.generate(*t5, {"encoder_input_tokens": jnp.ones((2, 3), jnp.float32)})
    with pytest.raises(decode.DecodeError, match="1..4 tokens per row"):
        decode.generate(*palm, {"decoder_input_tokens": jnp.asarray([[5, 6, 0, 0], [0, 0, 0, 0]])})
    with pytest.raises(decode.DecodeError, match="right-padded"):
        decode.generate(*palm, {"decoder_input_tokens": jnp.asarray([[5, 6, 0, 0], [0, 0, 7, 8]])})
    with pytest.raises(decode.DecodeError, match="2 rows but the batch has 3"):
        m = P.batch([_random_lora(t5[0], 0), _random_lora(t5[0], 1)])
        decode.generate(*t5, {"encoder_input_tokens": jnp.ones((3, 4), jnp.int32)}, m)
    with pytest.raises(decode.DecodeError, match="decoder_target_tokens"):
        decode.score(*t5, {"encoder_input_tokens": jnp.ones((2, 3), jnp.int32),
                           "decoder_input_tokens": jnp.ones((2, 3), jnp.int32)})


def test_two_stage_top_k_equals_one_top_k_over_all_beams_including_ties():
    rng = np.random.default_rng(0)
    # Few distinct values, so many ties across and within beams; -inf as for forced tokens.
    scores = rng.integers(0, 4, size=(3, 4, 9)).astype(np.float32)
    scores[1, 2] = -np.inf
    for n in (1, 8, 9, 12):
        want = jax.lax.top_k(jnp.asarray(scores).reshape(3, -1), n)
        got = decode.top_k_flat(jnp.asarray(scores), n)
        np.testing.assert_array_equal(np.asarray(got[0]), np.asarray(want[0]))
        np.testing.assert_array_equal(np.asarray(got[1]), np.asarray(want[1]))


# ------------------------------------------------------------------ token ids and shapes
def test_token_ids_outside_the_vocabulary_are_refused_at_every_public_entry_point(t5, palm):
    """JAX gathers clamp an id >= vocab and wrap a negative one: checked on the host before they do."""
    model, params = t5
    enc = jnp.asarray([[3, 4, 64, 1]])
    dec = jnp.asarray([[0, 5, 6]])
    with pytest.raises(decode.DecodeError, match=r"'encoder_input_tokens'\] holds token id 64 at \[0, 2\]"):
        model.logits(params, {"encoder_input_tokens": enc, "decoder_input_tokens": dec})
    with pytest.raises(decode.DecodeError, match="token id -2"):
        decode.generate(model, params, {"encoder_input_tokens": jnp.asarray([[3, -2, 1]])})
    with pytest.raises(decode.DecodeError, match=r"'decoder_target_tokens'\] holds token id 70"):
        decode.score(model, params, {"encoder_input_tokens": jnp.asarray([[3, 1]]), "decoder_input_tokens": dec,
                                     "decoder_target_tokens": jnp.asarray([[5, 6, 70]])})
    pmodel, pparams = palm
    with pytest.raises(decode.DecodeError, match=r"'decoder_input_tokens'\] holds token id 64"):
        pmodel.logits(pparams, {"decoder_input_tokens": jnp.asarray([[1, 64]])})
    with pytest.raises(decode.DecodeError, match="token id 99"):
        decode.generate(pmodel, pparams, {"decoder_input_tokens": jnp.asarray([[1, 7, 99]])})
    # Inside jit the ids are traced and cannot be read: the documented gather behaviour (clamping) applies.
    clamped = jax.jit(lambda b: pmodel.logits(pparams, b))({"decoder_input_tokens": jnp.asarray([[1, 64]])})
    np.testing.assert_allclose(clamped, pmodel.logits(pparams, {"decoder_input_tokens": jnp.asarray([[1, 63]])}),
                               atol=1e-5)


def test_empty_batches_zero_length_inputs_and_oversized_ngrams_are_named(t5, palm):
    model, params = t5
    with pytest.raises(decode.DecodeError, match=r"shape \(0, 4\): no rows"):
        decode.generate(model, params, {"encoder_input_tokens": jnp.zeros((0, 4), jnp.int32)})
    with pytest.raises(decode.DecodeError, match=r"shape \(2, 0\): zero-length rows"):
        decode.generate(model, params, {"encoder_input_tokens": jnp.zeros((2, 0), jnp.int32)})
    with pytest.raises(decode.DecodeError, match=r"no_repeat_ngram_size=6 is larger than the decoded sequence "
                                                 r"\(1 prompt positions \+ max_decode_len 4 = 5 tokens\)"):
        decode.generate(model, params, _enc_batch(), max_decode_len=4, no_repeat_ngram_size=6)
    decode.generate(model, params, _enc_batch(), max_decode_len=4, no_repeat_ngram_size=5)  # the largest that fits
    pmodel, pparams = palm
    with pytest.raises(decode.DecodeError, match=r"\(3 prompt positions \+ max_decode_len 2 = 5 tokens\)"):
        decode.generate(pmodel, pparams, {"decoder_input_tokens": jnp.asarray([[1, 5, 6]])}, max_decode_len=2,
                        no_repeat_ngram_size=6)


def test_prefix_prompts_decode_rows_independently_of_their_batch_neighbours(palm):
    """Prefill with the prefix mask plus protected prompt positions: a row's beams and score do not depend
    on how long the other rows' prompts are."""
    model, params = palm
    feats = model.prompt_features([[5, 6, 7, 8, 9, 10], [11, 12]], 8, pad_id=0, eos_id=model.config.eos_id)
    kw = dict(method="beam", max_decode_len=L, num_beams=3)
    both = decode.generate(model, params, {k: jnp.asarray(v) for k, v in feats.items()}, **kw)
    for b in range(2):
        alone = decode.generate(model, params, {k: jnp.asarray(v[b:b + 1]) for k, v in feats.items()}, **kw)
        np.testing.assert_array_equal(np.asarray(both["tokens"][b]), np.asarray(alone["tokens"][0]))
        np.testing.assert_allclose(float(both["scores"][b]), float(alone["scores"][0]), rtol=1e-5)
