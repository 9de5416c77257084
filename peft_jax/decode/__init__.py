"""Jitted decoding (greedy, sampling, beam search) and per-example scoring, for every model.

  out = generate(model, params, batch, peft=module, method="beam", max_decode_len=84,
                 num_beams=4, length_penalty=0.6, no_repeat_ngram_size=2)   # XL-Sum settings
  out["tokens"]   int32 [B, L], pad after EOS;  out["scores"]  float32 [B]
  loglik = score(model, params, batch, peft=module)                        # float32 [B]

How decoding starts is the model's (`Model.decode_inputs` / `decode_start`): the
encoder-decoder starts from its decoder start token, the decoder-only model
continues right-padded prompts, read in one pass by `decode_init` with the
attention training used (`decoder_causal_attention`: the prefix-LM mask), the
rest of longer prompts fed with the next prompt token forced; only the
continuation is returned. A module whose metadata records the other attention
(`decoder_attention`, see `trained_attention`) is refused. No-repeat-n-gram blocking bans,
as in HF, any token that would repeat an n-gram of the whole sequence, the prompt
(or the decoder start token) included.

  settings.py   options, their validation, `DecodeSettings`
  sequences.py  the shared token buffer: continuations, lengths, n-gram blocking
  sampling.py   greedy decoding and sampling
  beam.py       beam search (Hugging Face semantics)
  api.py        `generate`, `score`
"""

from peft_jax.decode.api import generate, score
from peft_jax.decode.beam import NEG, expand_peft, top_k_flat
from peft_jax.decode.sampling import filter_logits
from peft_jax.decode.sequences import block_ngrams
from peft_jax.decode.settings import (ATTENTION_KEY, ATTENTION_MODES, METHODS, DecodeError, DecodeSettings,
                                      make_settings, trained_attention)

__all__ = ["ATTENTION_KEY", "ATTENTION_MODES", "DecodeError", "DecodeSettings", "METHODS", "NEG", "block_ngrams",
           "expand_peft", "filter_logits", "generate", "make_settings", "score", "top_k_flat", "trained_attention"]
