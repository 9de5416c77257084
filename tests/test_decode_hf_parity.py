"""Decoding and scoring agree with Hugging Face `transformers` on the same converted tiny checkpoints.

Greedy == `generate(do_sample=False)`; beam search == HF beam search (every kept beam and its
score, with length penalty, early stopping in all three modes, EOS and no-repeat-n-gram);
`score` == the log-likelihood from the PyTorch forward pass.
"""

import numpy as np
import jax.numpy as jnp
import pytest
import torch

import peft_jax
from hf_checkpoints import save_llama, save_mt5

L = 10  # max new tokens


@pytest.fixture(scope="module")
def mt5(tmp_path_factory):
    path = tmp_path_factory.mktemp("mt5")
    hf = save_mt5(str(path))
    model, params = peft_jax.load_pretrained(str(path))
    enc = np.random.RandomState(0).randint(2, 96, size=(3, 7))
    enc[1, 5:] = 0  # a padded source row
    return hf, model, params, enc


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama")
    hf = save_llama(str(path))
    model, params = peft_jax.load_pretrained(str(path))
    prompt = np.random.RandomState(0).randint(3, 80, size=(2, 5))  # no pad id inside the prompts
    return hf, model, params, prompt


def _ours(setup, **kw):
    hf, model, params, x = setup
    key = "encoder_input_tokens" if model.family == "encoder_decoder" else "decoder_input_tokens"
    return peft_jax.generate(model, params, {key: jnp.asarray(x)}, max_decode_len=L, **kw)


def _hf(setup, eos, max_new_tokens=L, **kw):
    """HF continuations padded to max_new_tokens; HF fills finished beams with EOS when pad id is 0, so re-pad."""
    hf, model, _, x = setup
    enc_dec = model.family == "encoder_decoder"
    out = hf.generate(torch.tensor(x), attention_mask=torch.tensor(x != 0 if enc_dec else np.ones_like(x)),
                      do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=0,
                      return_dict_in_generate=True, output_scores=True,
                      # HF's MT5 cache is sized by the encoder depth; this checkpoint's decoder is deeper.
                      use_cache=not enc_dec, **kw)
    seqs = out.sequences[:, 1 if enc_dec else x.shape[1]:].numpy()
    seqs = np.pad(seqs, ((0, 0), (0, max_new_tokens - seqs.shape[1])))
    for row in seqs:
        hit = np.flatnonzero(row == eos)
        if hit.size:
            row[hit[0] + 1:] = 0
    return seqs, getattr(out, "sequences_scores", None)


def _an_eos(setup):
    """The token greedy decoding emits most often, used as EOS so that EOS handling is exercised."""
    tokens = np.asarray(_ours(setup)["tokens"]).ravel()
    return int(np.bincount(tokens[tokens > 1]).argmax())


@pytest.mark.parametrize("family", ["mt5", "llama"])
def test_greedy_equals_hf_generate_without_sampling(family, request):
    setup = request.getfixturevalue(family)
    eos = _an_eos(setup)
    ours = _ours(setup, method="greedy", eos_id=eos)
    theirs, _ = _hf(setup, eos, num_beams=1)
    np.testing.assert_array_equal(np.asarray(ours["tokens"]), theirs)
    assert (np.asarray(ours["tokens"]) == eos).any()


def _assert_same_beams(ours, theirs, their_scores, k):
    b = np.asarray(ours["beams"]).shape[0]
    np.testing.assert_array_equal(np.asarray(ours["beams"]).reshape(b * k, -1), theirs)
    np.testing.assert_allclose(np.asarray(ours["beam_scores"]).reshape(-1), their_scores.numpy(), atol=1e-4)
    np.testing.assert_array_equal(np.asarray(ours["tokens"]), theirs[::k])


RANDOM_MODEL_BEAMS = [("mt5", dict(num_beams=3, length_penalty=0.6, no_repeat_ngram_size=2)),
                      ("mt5", dict(num_beams=4, length_penalty=0.6, early_stopping=True)),
                      ("llama", dict(num_beams=3, length_penalty=0.6, no_repeat_ngram_size=2))]


@pytest.mark.parametrize("family, settings", RANDOM_MODEL_BEAMS)
def test_beam_search_equals_hf_beam_search_on_random_checkpoints(family, settings, request):
    setup = request.getfixturevalue(family)
    eos = _an_eos(setup)
    ours = _ours(setup, method="beam", eos_id=eos, return_all_beams=True, **settings)
    k = settings["num_beams"]
    theirs, their_scores = _hf(setup, eos, num_return_sequences=k, **{"early_stopping": False, **settings})
    _assert_same_beams(ours, theirs, their_scores, k)


# ------------------------------------------------------- a checkpoint that is a Markov chain
V_CHAIN, D_CHAIN = 8, 16


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """A Llama checkpoint whose next-token distribution is a designed Markov chain plus a small context term.

    One-hot embeddings in the first V hidden dims, no MLP, attention writing only to the other dims:
    the final RMSNorm scales (one-hot + context) by ~4, so logits = 4 * lm_head[:, last token] + small
    context-dependent terms (which break the ties a pure chain would create). Token 0 (pad) is never likely.
    """
    path = str(tmp_path_factory.mktemp("chain"))
    hf = save_llama(path, vocab_size=V_CHAIN, hidden_size=D_CHAIN, intermediate_size=8, num_hidden_layers=1,
                    num_attention_heads=2, num_key_value_heads=1, head_dim=4)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("down_proj.weight"):
                p.zero_()
            if "norm" in name:
                p.fill_(1.0)
            if name.endswith(("o_proj.weight", "v_proj.weight")):
                p.copy_(torch.randn_like(p))
            if name.endswith("o_proj.weight"):
                p[:V_CHAIN] = 0  # context reaches only the dims the chain does not use
        hf.model.embed_tokens.weight.copy_(torch.eye(V_CHAIN, D_CHAIN))
    hf.save_pretrained(path)
    model, params = peft_jax.load_pretrained(path)
    return hf, model, params


def _set_chain(chain, seed):
    """Peaky random transition rows with P(EOS) in [0.05, 0.4]; the same head on both sides."""
    hf, model, params = chain
    rs = np.random.RandomState(seed)
    probs = rs.dirichlet(np.full(V_CHAIN - 2, 0.3), size=V_CHAIN)
    eos = rs.uniform(0.05, 0.4, size=(V_CHAIN, 1))
    logp = np.log(np.concatenate([np.full((V_CHAIN, 1), 1e-6), eos, (1 - eos) * probs], axis=1))
    head = (np.concatenate([logp.T, 0.1 * rs.randn(V_CHAIN, D_CHAIN - V_CHAIN)], axis=1) / 4.0).astype(np.float32)
    with torch.no_grad():
        hf.lm_head.weight.copy_(torch.tensor(head))
    return dict(params, logits_dense={"kernel": jnp.asarray(head.T)})


CHAIN_BEAMS = [dict(num_beams=2, length_penalty=0.6), dict(num_beams=2, length_penalty=1.5),
               dict(num_beams=3, length_penalty=0.6, early_stopping=True),
               dict(num_beams=2, length_penalty=1.5, early_stopping="never"),
               dict(num_beams=3, length_penalty=-0.5, early_stopping="never")]


@pytest.mark.parametrize("settings", CHAIN_BEAMS)
def test_beam_search_equals_hf_when_many_hypotheses_finish_early(chain, settings):
    """Early-stopping rules (False / True / "never"), the kept top K and length penalties all matter here."""
    hf, model, _ = chain
    prompt = np.arange(2, V_CHAIN)[:, None]  # every non-special token as a one-token prompt
    k, finished = settings["num_beams"], []
    for seed in range(6):
        params = _set_chain(chain, seed)
        ours = peft_jax.generate(model, params, {"decoder_input_tokens": jnp.asarray(prompt)}, method="beam",
                                 max_decode_len=8, eos_id=1, return_all_beams=True, **settings)
        theirs, their_scores = _hf((hf, model, params, prompt), 1, max_new_tokens=8, num_return_sequences=k,
                                   **{"early_stopping": False, **settings})
        _assert_same_beams(ours, theirs, their_scores, k)
        finished.append((theirs == 1).any(axis=1).mean())
    assert np.mean(finished) > 0.2  # EOS handling really was exercised


@pytest.mark.parametrize("family", ["mt5", "llama"])
def test_score_equals_hf_forward_loglikelihood(family, request):
    hf, model, params, x = request.getfixturevalue(family)
    rs = np.random.RandomState(1)
    targets = rs.randint(2, model.config.vocab_size, size=(x.shape[0], 6))
    weights = (np.arange(6)[None, :] < np.array([6, 3, 5][:x.shape[0]])[:, None]).astype(np.float32)
    if model.family == "encoder_decoder":
        inputs = np.concatenate([np.zeros((x.shape[0], 1), int), targets[:, :-1]], axis=1)
        batch = {"encoder_input_tokens": x}
        with torch.no_grad():
            logits = hf(input_ids=torch.tensor(x), attention_mask=torch.tensor(x != 0),
                        decoder_input_ids=torch.tensor(inputs)).logits
    else:  # the prompt is context only: zero weight on predicting its own tokens
        inputs = np.concatenate([x, targets[:, :-1]], axis=1)
        targets = np.concatenate([x[:, 1:], targets], axis=1)
        weights = np.concatenate([np.zeros((x.shape[0], x.shape[1] - 1), np.float32), weights], axis=1)
        batch = {}
        with torch.no_grad():
            logits = hf(input_ids=torch.tensor(inputs)).logits
    logp = torch.log_softmax(logits.double(), -1).gather(-1, torch.tensor(targets)[..., None])[..., 0].numpy()
    want = (logp * weights).sum(-1)
    batch.update(decoder_input_tokens=inputs, decoder_target_tokens=targets, decoder_loss_weights=weights)
    got = peft_jax.score(model, params, {k: jnp.asarray(v) for k, v in batch.items()})
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-4)
