"""Decoder-only summarization decodes as it trained: the same start token (BOS), the same article budget
and the same attention over the article (prefix LM or causal), so the decoding path (one prefill of the
prompt, then the KV cache step by step) gives the log-probabilities the training path (teacher-forced
`model.logits` over `pair_features`) gives for the same summary."""

import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import peft_jax
import testdata
from peft_jax import decode
from peft_jax import peft as P
from peft_jax.models import get_model
from peft_jax.models.base import first_decode_position

ROOT = pathlib.Path(__file__).resolve().parents[1]
PROMPT = 8  # prompt positions at decoding: BOS + article + EOS
TARGET = 6  # summary budget (EOS included)
ARTICLES = [[11, 12, 13, 14, 15], list(range(20, 31))]  # one short, one cut to the common budget
SUMMARIES = [[40, 41, 42], [43, 44, 45, 46, 47]]
TOL = 1e-5


def _tiny(style: str):
    """Tiny random Llama- or Gemma-style bases with their checkpoints' special ids."""
    common = dict(vocab_size=64, d_model=32, num_heads=4, head_dim=8, d_ff=64, num_layers=2, num_kv_heads=2,
                  block="sequential", dropout_rate=0.0)
    if style == "llama":
        return get_model("palm_tiny", activation="silu", tie_word_embeddings=False, pad_id=0, bos_id=1, eos_id=2,
                         **common)
    return get_model("palm_tiny", activation="gelu", norm_plus_one=True, embed_scale=True, pad_id=0, bos_id=2,
                     eos_id=1, **common)


def _tiny_params(style: str):
    """The base and its random parameters; Gemma's tied table scaled as a trained one is (entries
    ~ d_model ** -0.5, so that logits stay O(1) and log-probabilities of a random model are not ~ -40)."""
    model = _tiny(style)
    params = model.init(jax.random.key(0))
    if model.config.embed_scale:
        table = params["token_embedder"]["embedding"]
        params = {**params, "token_embedder": {"embedding": table * model.config.d_model ** -0.5}}
    return model, params


def _hf_fixture(name: str):
    """A tiny random checkpoint written by transformers (tests/data/checkpoints/README.md)."""
    return peft_jax.load_pretrained(str(testdata.path("checkpoints", name)))


def _modules(model, params):
    """A LoRA with non-zero B and a soft prompt: both change what the prefix attends to."""
    lora = P.init(model, P.LoraConfig(rank=2, targets=r".*attention/\w+$|.*mlp/\w+$"), jax.random.key(1),
                  params=params)
    keys = iter(jax.random.split(jax.random.key(2), 64))
    lora = lora.replace(params=jax.tree_util.tree_map_with_path(
        lambda p, x: 0.05 * jax.random.normal(next(keys), x.shape) if p[-1].key == "lora_b" else x, lora.params))
    prompt = P.init(model, P.PromptConfig(length=2, init="random"), jax.random.key(3), params=params)
    return [lora, prompt]


def _training_logprobs(model, params, peft, prefix: bool):
    """Teacher-forced log p(summary + EOS) per token, from the training features and `model.logits`."""
    c = model.config
    rows = [model.pair_features(a, s, PROMPT + TARGET, TARGET, eos_id=c.eos_id, pad_id=c.pad_id,
                                decoder_start_id=model.decoder_start_id, prefix=prefix)
            for a, s in zip(ARTICLES, SUMMARIES)]
    batch = {k: jnp.asarray(np.stack([r[k] for r in rows])) for k in rows[0]}
    logp = jax.nn.log_softmax(model.logits(params, batch, peft), axis=-1)
    tok = jnp.take_along_axis(logp, batch["decoder_target_tokens"][..., None], axis=-1)[..., 0]
    weights = np.asarray(batch["decoder_loss_weights"]) > 0
    return batch, [np.asarray(tok)[b][weights[b]] for b in range(len(rows))]


@functools.partial(jax.jit, static_argnums=0)
def _step(model, params, state, tokens, peft):
    return model.decode_step(params, state, tokens, peft)


def _decoding_logprobs(model, params, peft, prefix: bool):
    """log p(summary + EOS) per token along the decoding path: `decode_init` reads the prompts, then
    `decode_step` feeds one token at a time from `first_decode_position`, as `generate` does."""
    c = model.config
    feats = model.prompt_features(ARTICLES, PROMPT, pad_id=c.pad_id, eos_id=c.eos_id, prefix=prefix)
    start = model.decode_start(model.decode_inputs({k: jnp.asarray(v) for k, v in feats.items()}))
    lengths = np.asarray(start.prompt_lengths)
    width = PROMPT + TARGET
    buf = np.full((len(ARTICLES), width), c.pad_id, np.int32)
    for b, s in enumerate(SUMMARIES):
        buf[b, :lengths[b]] = feats["decoder_input_tokens"][b, :lengths[b]]
        buf[b, lengths[b]:lengths[b] + len(s) + 1] = s + [c.eos_id]
    state = model.decode_init(params, start.init_batch, width - 1, peft)
    per_pos = {}
    for t in range(int(first_decode_position(lengths)), width - 1):
        logits, state = _step(model, params, state, jnp.asarray(buf[:, t:t + 1]), peft)
        per_pos[t] = np.asarray(jax.nn.log_softmax(logits[:, 0], axis=-1))
    out = [np.array([per_pos[t][b, buf[b, t + 1]] for t in range(lengths[b] - 1, lengths[b] + len(s))])
           for b, s in enumerate(SUMMARIES)]
    return feats, out


@pytest.mark.parametrize("base", ["llama_style", "gemma_style", "hf_llama_safetensors", "hf_gemma2_safetensors"])
def test_decoding_path_log_probs_equal_teacher_forced_training_log_probs(base):
    """Both attention modes, ragged prompts (one article cut to the budget), a LoRA and a soft prompt.
    The Gemma 2 fixture adds soft-capping and sliding-window layers (window 8 < the 14 positions)."""
    if base.startswith("hf_"):
        model, params = _hf_fixture(base)
    else:
        model, params = _tiny_params(base.split("_")[0])
    peft = _modules(model, params)
    bos = model.config.bos_id
    assert bos is not None and bos != model.config.pad_id
    for prefix in (True, False):
        train_batch, trained = _training_logprobs(model, params, peft, prefix)
        feats, decoded = _decoding_logprobs(model, params, peft, prefix)
        np.testing.assert_array_equal(np.asarray(train_batch["decoder_input_tokens"])[:, 0], bos)
        np.testing.assert_array_equal(feats["decoder_input_tokens"][:, 0], bos)
        for b in range(len(ARTICLES)):
            assert len(trained[b]) == len(SUMMARIES[b]) + 1
            np.testing.assert_allclose(decoded[b], trained[b], rtol=0, atol=TOL, err_msg=f"prefix={prefix} row {b}")


def test_prefix_and_causal_training_really_differ():
    """The attention mode changes the numbers (so the agreement above is not a coincidence of the mode)."""
    model, params = _tiny_params("llama")
    peft = _modules(model, params)
    prefix = _training_logprobs(model, params, peft, True)[1]
    causal = _training_logprobs(model, params, peft, False)[1]
    assert max(np.abs(p - c).max() for p, c in zip(prefix, causal)) > 1e-3


def test_the_prompt_is_the_start_of_the_training_sequence_with_one_article_budget():
    """Whatever the summary's length, training gives the article the budget decoding gives it."""
    model = _tiny("gemma")
    c = model.config
    long_article = list(range(10, 40))
    feats = model.prompt_features([long_article], PROMPT, pad_id=c.pad_id, eos_id=c.eos_id)
    assert feats["decoder_input_tokens"][0].tolist() == [c.bos_id] + long_article[:PROMPT - 2] + [c.eos_id]
    np.testing.assert_array_equal(feats["decoder_causal_attention"][0], np.ones(PROMPT))
    for summary in ([50], [50, 51, 52, 53, 54, 55, 56, 57, 58]):
        pair = model.pair_features(long_article, summary, PROMPT + TARGET, TARGET, eos_id=c.eos_id, pad_id=c.pad_id,
                                   decoder_start_id=model.decoder_start_id)
        np.testing.assert_array_equal(pair["decoder_input_tokens"][:PROMPT], feats["decoder_input_tokens"][0])
        np.testing.assert_array_equal(pair["decoder_causal_attention"][:PROMPT + 1] > 0,
                                      np.arange(PROMPT + 1) < PROMPT)
        np.testing.assert_array_equal(pair["decoder_loss_weights"][:PROMPT - 1], 0)
    causal = model.pair_features(long_article, [50], PROMPT + TARGET, TARGET, eos_id=c.eos_id, pad_id=c.pad_id,
                                 decoder_start_id=model.decoder_start_id, prefix=False)
    assert not causal["decoder_causal_attention"].any()
    assert "decoder_causal_attention" not in model.prompt_features([long_article], PROMPT, pad_id=c.pad_id,
                                                                    eos_id=c.eos_id, prefix=False)


def test_a_base_without_bos_starts_sequences_with_eos_never_pad():
    model = get_model("palm_tiny", vocab_size=64)
    assert model.config.bos_id is None and model.decoder_start_id == model.config.eos_id != model.config.pad_id
    feats = model.prompt_features([[5, 6]], 6, pad_id=0, eos_id=model.config.eos_id)
    assert feats["decoder_input_tokens"][0, 0] == model.config.eos_id


@pytest.mark.parametrize("method", ["greedy", "beam"])
def test_generate_scores_equal_the_training_path_log_likelihood_of_its_output(method):
    """End to end through `generate` (ragged prompts, prefix mode): each row's greedy score, and the best
    beam's summed log-probability (length penalty 0), are what the training path gives that output."""
    model, params = _tiny_params("llama")
    peft = _modules(model, params)
    c = model.config
    feats = model.prompt_features(ARTICLES, PROMPT, pad_id=c.pad_id, eos_id=c.eos_id)
    out = peft_jax.generate(model, params, {k: jnp.asarray(v) for k, v in feats.items()}, peft, method=method,
                            max_decode_len=TARGET - 1, num_beams=2, length_penalty=0.0)
    for b, article in enumerate(ARTICLES):
        n = int(out["lengths"][b])
        tokens = np.asarray(out["tokens"][b, :n]).tolist()
        summary = tokens[:-1] if tokens[-1] == c.eos_id else tokens
        pair = model.pair_features(article, summary, PROMPT + TARGET, TARGET, eos_id=c.eos_id, pad_id=c.pad_id,
                                   decoder_start_id=model.decoder_start_id)
        batch = {k: jnp.asarray(v[None]) for k, v in pair.items()}
        logp = jax.nn.log_softmax(model.logits(params, batch, peft), axis=-1)[0]
        first = int(np.argmax(pair["decoder_loss_weights"] > 0))
        want = sum(float(logp[first + i, tok]) for i, tok in enumerate(tokens))
        np.testing.assert_allclose(float(out["scores"][b]), want, rtol=0, atol=1e-4)


def test_decoding_with_the_other_attention_than_training_is_refused_naming_both():
    model, params = _tiny_params("llama")
    lora = _modules(model, params)[0]
    c = model.config
    for trained, prefix in (("prefix", False), ("causal", True)):
        module = lora.with_metadata(decoder_attention=trained)
        feats = model.prompt_features(ARTICLES, PROMPT, pad_id=c.pad_id, eos_id=c.eos_id, prefix=prefix)
        batch = {k: jnp.asarray(v) for k, v in feats.items()}
        given = "prefix" if prefix else "causal"
        with pytest.raises(decode.DecodeError, match=f"decoder_attention='{trained}'.*'{given}' attention"):
            peft_jax.generate(model, params, batch, module, max_decode_len=2)
        ok = model.prompt_features(ARTICLES, PROMPT, pad_id=c.pad_id, eos_id=c.eos_id, prefix=not prefix)
        peft_jax.generate(model, params, {k: jnp.asarray(v) for k, v in ok.items()}, module, max_decode_len=2)
    mixed = [lora.with_metadata(decoder_attention="prefix"), lora.with_metadata(decoder_attention="causal")]
    with pytest.raises(decode.DecodeError, match="different attention"):
        decode.trained_attention(mixed)
    assert decode.trained_attention(lora) is None


@pytest.mark.parametrize("attention", ["prefix", "causal"])
def test_xlsum_training_features_and_evaluation_prompts_agree_and_the_module_records_the_attention(attention):
    """The training input pipeline (real XL-Sum records, the multilingual tokenizer) and the evaluation
    prompts start with the base's BOS and cut the article alike; the module metadata names the attention."""
    import importlib.util

    from peft_jax import data
    from peft_jax.train import inputs

    spec = importlib.util.spec_from_file_location("train_config", ROOT / "configs" / "train.py")
    train_config = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_config)
    cfg = train_config.get_config("model=palm_tiny,objective=seq2seq,source=xlsum").data
    cfg.paths, cfg.language = str(testdata.path("xlsum")), "english"
    cfg.input_length, cfg.target_length, cfg.decoder_attention = 40, 12, attention
    tok = data.load_tokenizer(testdata.path("tokenizers", "mistral_v3_bytefallback_32k.model"))
    model = get_model("palm_tiny", vocab_size=tok.vocab_size, **{k: getattr(tok, k) for k in ("pad_id", "eos_id",
                                                                                              "bos_id")})
    record = inputs._records(cfg, "train", labeled=True)[0]
    feats = inputs._preprocess_fn(cfg, model, "seq2seq", tok)(record)
    budget = cfg.input_length - cfg.target_length
    prompt = model.prompt_features([tok.encode(record["text"])], budget, pad_id=tok.pad_id, eos_id=tok.eos_id,
                                   prefix=attention == "prefix")
    assert feats["decoder_input_tokens"][0] == tok.bos_id == 1
    np.testing.assert_array_equal(feats["decoder_input_tokens"][:budget], prompt["decoder_input_tokens"][0])
    assert feats["decoder_input_tokens"][budget - 1] == tok.eos_id  # the article filled its budget
    assert feats["decoder_causal_attention"].sum() == (budget if attention == "prefix" else 0)
    assert inputs.module_metadata(cfg, model, "seq2seq") == {decode.ATTENTION_KEY: attention}
    assert inputs.module_metadata(cfg, model, "causal_lm") == {}
