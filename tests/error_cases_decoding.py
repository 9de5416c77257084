"""Bad-input cases of the catalogue: token ids, decoding and text inputs."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from error_case_registry import case, expect, tiny  # noqa: F401


def _decoder():
    """A tiny decoder-only base (Llama-style special ids: BOS 1, EOS 2, pad 0)."""
    from peft_jax.models import get_model

    model = get_model("palm_tiny", vocab_size=32, d_model=16, num_heads=2, head_dim=8, d_ff=16, num_layers=1,
                      bos_id=1, eos_id=2, pad_id=0)
    return model, model.init(jax.random.PRNGKey(0))


def _ids(rows):
    return jnp.asarray(rows, jnp.int32)


# ------------------------------------------------------------------------------ token ids
@case("decoding", "`model.logits` with a token id >= vocab_size (32 on a vocabulary of 32)")
def _logits_id_too_big(tmp):
    from peft_jax.decode import DecodeError

    model, params = tiny()
    return expect(DecodeError, model.logits, params, {"encoder_input_tokens": _ids([[3, 4, 32, 1]]),
                                                      "decoder_input_tokens": _ids([[0, 5]])})


@case("decoding", "`generate` with a negative token id in the encoder input")
def _generate_negative_id(tmp):
    import peft_jax
    from peft_jax.decode import DecodeError

    model, params = tiny()
    return expect(DecodeError, peft_jax.generate, model, params, {"encoder_input_tokens": _ids([[3, -1, 1]])})


@case("decoding", "`score` with a target id >= vocab_size (was: NaN)")
def _score_target_too_big(tmp):
    import peft_jax
    from peft_jax.decode import DecodeError

    model, params = tiny()
    return expect(DecodeError, peft_jax.score, model, params, {"encoder_input_tokens": _ids([[3, 4, 1]]),
                                                               "decoder_input_tokens": _ids([[0, 5, 6]]),
                                                               "decoder_target_tokens": _ids([[5, 6, 40]])})


@case("decoding", "decoder-only `generate` with a prompt token id >= vocab_size")
def _decoder_prompt_id(tmp):
    import peft_jax
    from peft_jax.decode import DecodeError

    model, params = _decoder()
    return expect(DecodeError, peft_jax.generate, model, params, {"decoder_input_tokens": _ids([[1, 7, 99, 2]])})


# -------------------------------------------------------------------- shapes and settings
@case("decoding", "`generate` on an empty batch (0 rows)")
def _empty_batch(tmp):
    import peft_jax
    from peft_jax.decode import DecodeError

    model, params = tiny()
    return expect(DecodeError, peft_jax.generate, model, params, {"encoder_input_tokens": jnp.zeros((0, 4), jnp.int32)})


@case("decoding", "`generate` on zero-length inputs (shape [2, 0])")
def _zero_length(tmp):
    import peft_jax
    from peft_jax.decode import DecodeError

    model, params = tiny()
    return expect(DecodeError, peft_jax.generate, model, params, {"encoder_input_tokens": jnp.zeros((2, 0), jnp.int32)})


@case("decoding", "decoder-only `score` on zero-length sequences")
def _score_zero_length(tmp):
    import peft_jax
    from peft_jax.decode import DecodeError

    model, params = _decoder()
    empty = jnp.zeros((1, 0), jnp.int32)
    return expect(DecodeError, peft_jax.score, model, params, {"decoder_input_tokens": empty,
                                                               "decoder_target_tokens": empty})


@case("decoding", "`no_repeat_ngram_size` larger than the decoded sequence (9 for 1 start token + 4 tokens)")
def _ngram_too_big(tmp):
    import peft_jax
    from peft_jax.decode import DecodeError

    model, params = tiny()
    return expect(DecodeError, peft_jax.generate, model, params, {"encoder_input_tokens": _ids([[3, 4, 1]])},
                  max_decode_len=4, no_repeat_ngram_size=9)


@case("decoding", "decoder-only `no_repeat_ngram_size` larger than prompt + continuation")
def _ngram_too_big_decoder(tmp):
    import peft_jax
    from peft_jax.decode import DecodeError

    model, params = _decoder()
    return expect(DecodeError, peft_jax.generate, model, params, {"decoder_input_tokens": _ids([[1, 5, 2]])},
                  max_decode_len=2, no_repeat_ngram_size=6)


# ----------------------------------------------------------------- attention over the prompt
@case("decoding", "a prefix-LM task module decoded with causal prompts (no `decoder_causal_attention`)")
def _attention_mismatch(tmp):
    import peft_jax
    from peft_jax import peft
    from peft_jax.decode import DecodeError

    model, params = _decoder()
    module = peft.init(model, peft.LoraConfig(rank=2), jax.random.PRNGKey(1)).with_metadata(
        decoder_attention="prefix")
    batch = model.prompt_features([[5, 6, 7]], 6, pad_id=0, eos_id=2, prefix=False)
    return expect(DecodeError, peft_jax.generate, model, params, {k: jnp.asarray(v) for k, v in batch.items()},
                  module, max_decode_len=2)


@case("decoding", "`decoder_causal_attention` that is not a prefix of the prompt (a hole)")
def _prefix_with_hole(tmp):
    import peft_jax
    from peft_jax.decode import DecodeError

    model, params = _decoder()
    return expect(DecodeError, peft_jax.generate, model, params,
                  {"decoder_input_tokens": _ids([[1, 5, 6, 2]]), "decoder_causal_attention": _ids([[1, 0, 1, 1]])})


@case("config", "train config: `data.decoder_attention` neither 'prefix' nor 'causal'")
def _attention_value(tmp):
    from peft_jax.models import get_model
    from peft_jax.train import config_lib, inputs
    import ml_collections

    cfg = ml_collections.ConfigDict({"decoder_attention": "bidirectional"})
    return expect(config_lib.ConfigError, inputs.attends_prefix, cfg, get_model("palm_tiny"), "seq2seq")


@case("config", "train config: `data.decoder_attention='causal'` for an mT5 (encoder-decoder) task module")
def _attention_t5(tmp):
    from peft_jax.train import config_lib, inputs
    import ml_collections

    cfg = ml_collections.ConfigDict({"decoder_attention": "causal"})
    return expect(config_lib.ConfigError, inputs.attends_prefix, cfg, tiny()[0], "seq2seq")


# ------------------------------------------------------------------------------- text input
def _tokenizer():
    import testdata
    from peft_jax import data

    return data.load_tokenizer(testdata.path("tokenizers", "mistral_v3_bytefallback_32k.model"))


@case("tokenizer", "text with a lone surrogate (`'abc \\ud800 def'`, e.g. from JSON `\"\\ud800\"`)")
def _lone_surrogate(tmp):
    from peft_jax.data.tokenizers import TextInputError

    return expect(TextInputError, _tokenizer().encode, "abc \ud800 def")


@case("tokenizer", "bytes instead of text given to `encode`")
def _bytes_text(tmp):
    from peft_jax.data.tokenizers import TextInputError

    return expect(TextInputError, _tokenizer().encode, b"abc def")
