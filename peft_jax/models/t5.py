"""mT5 / T5 v1.1 encoder-decoder as pure functions of explicit parameter trees.

RMSNorm without bias, relative-position buckets (bidirectional in the encoder,
causal in the decoder, one table per stack shared by all its layers), gated-GELU
MLP, no scaling of attention logits, untied LM head (tied T5 v1.0 style as an
option). Parameter names follow t5x; `peft_jax.models.hf_names` maps Hugging Face names.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from peft_jax.data import preprocess
from peft_jax.models import hf_names
from peft_jax.models import layers as L
from peft_jax.models.base import DECODER_KEYS, DecodeStart, Model, check_token_ids, right_padded, token_array
from peft_jax.models.spec import ParamSpec
from peft_jax.peft.scope import Scope


@dataclasses.dataclass(frozen=True)
class T5Config:
    """Dimensions and options of a T5 v1.1 / mT5 model (HF field names where they exist)."""

    vocab_size: int
    d_model: int
    d_kv: int
    d_ff: int
    num_heads: int
    num_layers: int
    num_decoder_layers: int
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    dropout_rate: float = 0.1
    layer_norm_epsilon: float = 1e-6
    activation: str = "gelu"
    tie_word_embeddings: bool = False
    # A stack with its own input table (`<stack>/token_embedder/embedding`) instead of the shared one, as
    # checkpoints with untied encoder / decoder embeddings hold them.
    encoder_embedding: bool = False
    decoder_embedding: bool = False
    dtype: str = "float32"
    pad_id: int = 0
    eos_id: int = 1
    decoder_start_id: int = 0


def _attention_specs(c: T5Config) -> dict:
    hk = c.num_heads * c.d_kv
    std = c.d_model**-0.5
    return {
        "query": {"kernel": ParamSpec((c.d_model, hk), ("embed", "heads"), stddev=(c.d_model * c.d_kv) ** -0.5)},
        "key": {"kernel": ParamSpec((c.d_model, hk), ("embed", "heads"), stddev=std)},
        "value": {"kernel": ParamSpec((c.d_model, hk), ("embed", "heads"), stddev=std)},
        "out": {"kernel": ParamSpec((hk, c.d_model), ("heads", "embed"), stddev=hk**-0.5)},
    }


def _mlp_specs(c: T5Config) -> dict:
    return {
        "wi_0": {"kernel": ParamSpec((c.d_model, c.d_ff), ("embed", "mlp"), stddev=c.d_model**-0.5)},
        "wi_1": {"kernel": ParamSpec((c.d_model, c.d_ff), ("embed", "mlp"), stddev=c.d_model**-0.5)},
        "wo": {"kernel": ParamSpec((c.d_ff, c.d_model), ("mlp", "embed"), stddev=c.d_ff**-0.5)},
    }


def _norm(c: T5Config) -> dict:
    return {"scale": ParamSpec((c.d_model,), ("embed",), init="ones")}


def _relpos(c: T5Config) -> dict:
    return {"rel_embedding": ParamSpec((c.relative_attention_num_buckets, c.num_heads), ("relpos_buckets", "heads"))}


ENC_DEC_KEYS = ("encoder_input_tokens",) + DECODER_KEYS


@dataclasses.dataclass(frozen=True)
class T5Model(Model):
    """The encoder-decoder. Hashable, so it can be closed over by jitted functions."""

    config: T5Config
    family: str = dataclasses.field(default="encoder_decoder", init=False)

    CONFIG_CLASS = T5Config
    OBJECTIVES = {"span_corruption": ENC_DEC_KEYS, "seq2seq": ENC_DEC_KEYS}
    LOGITS_KEYS = ("encoder_input_tokens", "decoder_input_tokens")
    HF_TASK_TYPE = "SEQ_2_SEQ_LM"

    # ---------------------------------------------------------------- parameters
    def param_specs(self) -> dict:
        c = self.config
        enc = {f"layers_{i}": {"pre_attention_layer_norm": _norm(c), "attention": _attention_specs(c),
                               "pre_mlp_layer_norm": _norm(c), "mlp": _mlp_specs(c)}
               for i in range(c.num_layers)}
        dec = {f"layers_{i}": {"pre_self_attention_layer_norm": _norm(c), "self_attention": _attention_specs(c),
                               "pre_cross_attention_layer_norm": _norm(c),
                               "encoder_decoder_attention": _attention_specs(c),
                               "pre_mlp_layer_norm": _norm(c), "mlp": _mlp_specs(c)}
               for i in range(c.num_decoder_layers)}
        enc.update(relpos_bias=_relpos(c), encoder_norm=_norm(c))
        dec.update(relpos_bias=_relpos(c), decoder_norm=_norm(c))
        if not c.tie_word_embeddings:
            dec["logits_dense"] = {"kernel": ParamSpec((c.d_model, c.vocab_size), ("embed", "vocab"),
                                                       stddev=c.d_model**-0.5)}
        table = lambda: {"embedding": ParamSpec((c.vocab_size, c.d_model), ("vocab", "embed"))}
        for stack, own in ((enc, c.encoder_embedding), (dec, c.decoder_embedding)):
            if own:
                stack["token_embedder"] = table()
        shared = not (c.encoder_embedding and c.decoder_embedding and not c.tie_word_embeddings)
        # The shared table, while something reads it.
        return {**({"token_embedder": table()} if shared else {}), "encoder": enc, "decoder": dec}

    def _scope(self, params, peft, dropout_rng=None) -> Scope:
        return Scope.root(params, peft, self.dtype, dropout_rng)

    # ------------------------------------------------------------------- helpers
    def _embed(self, s: Scope, tokens_BxT, stack: str):
        """Token embeddings for `stack`: its own table if it has one, else the shared one."""
        own = self.config.encoder_embedding if stack == "encoder" else self.config.decoder_embedding
        return (s.child(stack) if own else s).child("token_embedder").param("embedding")[tokens_BxT]

    def _key_value(self, s: Scope, kv_BxSxD):
        """Keys and values [B, S, H, K] of an attention scope."""
        h = self.config.num_heads
        return L.split_heads(s.child("key").linear(kv_BxSxD), h), L.split_heads(s.child("value").linear(kv_BxSxD), h)

    def _attention(self, s: Scope, x_BxTxD, kv_BxSxD, bias, mask, cache=None, index=None):
        q = L.split_heads(s.child("query").linear(x_BxTxD), self.config.num_heads)
        if cache is not None and "cross_k" in cache:
            k, v, new_cache = cache["cross_k"], cache["cross_v"], cache
        else:
            k, v = self._key_value(s, kv_BxSxD)
            new_cache = cache
            if cache is not None:  # self-attention KV cache: write T new positions, attend over all L
                k = L.update_cache(cache["k"], k, index)
                v = L.update_cache(cache["v"], v, index)
                new_cache = {"k": k, "v": v}
        if k.shape[0] != q.shape[0]:  # cross K/V kept once per example, queries from r beams each
            out = _attend_shared_kv(q, k, v, mask)
        else:
            out = L.attend(q, k, v, bias, mask, scale=1.0)
        return s.child("out").linear(out), new_cache

    def _sublayer(self, x, s: Scope, norm_key, fn, adapter_key, site):
        """Pre-norm residual sub-layer of layer scope `s` with dropout at `site` and optional adapters."""
        c = self.config
        h = L.rms_norm(x, s.child(norm_key), c.layer_norm_epsilon)
        y, aux = fn(h)
        y = s.adapters(s.dropout(y, c.dropout_rate, site), adapter_key)
        return x + y, aux

    def _mlp(self, s: Scope):
        """The MLP sub-layer function of layer scope `s` (no cache)."""
        c = self.config
        return lambda h: (L.gated_mlp(h, s.child("mlp"), c.activation, c.dropout_rate), None)

    # -------------------------------------------------------------------- encoder
    def encode(self, params, encoder_input_tokens, peft=None, *, dropout_rng=None):
        """Encoder output [B, P+S, D] and its key mask [B, P+S] (P soft-prompt positions)."""
        return self._encode(self._scope(params, peft, dropout_rng), encoder_input_tokens)

    def _encode(self, s: Scope, tokens_BxS):
        c = self.config
        x = self._embed(s, tokens_BxS, "encoder")
        mask_BxS = tokens_BxS != c.pad_id
        prompt = s.prompts(tokens_BxS.shape[0])
        if prompt is not None:  # soft prompt prepended to the encoder input, always attended
            x = jnp.concatenate([prompt, x], axis=1)
            mask_BxS = jnp.concatenate([jnp.ones(prompt.shape[:2], bool), mask_BxS], axis=1)
        enc = s.child("encoder")
        x = enc.dropout(x, c.dropout_rate, "embed")
        pos = jnp.arange(x.shape[1])
        bias = L.relative_bias(enc.child("relpos_bias"), pos, pos, True, c.relative_attention_num_buckets,
                               c.relative_attention_max_distance)
        mask_BxSxS = jnp.broadcast_to(mask_BxS[:, None, :], (x.shape[0], x.shape[1], x.shape[1]))
        for i in range(c.num_layers):
            layer = enc.child(f"layers_{i}")
            attn = lambda h: self._attention(layer.child("attention"), h, h, bias, mask_BxSxS)
            x, _ = self._sublayer(x, layer, "pre_attention_layer_norm", attn, "attention_adapter", "attn")
            x, _ = self._sublayer(x, layer, "pre_mlp_layer_norm", self._mlp(layer), "mlp_adapter", "mlp_out")
        x = L.rms_norm(x, enc.child("encoder_norm"), c.layer_norm_epsilon)
        return enc.dropout(x, c.dropout_rate, "final"), mask_BxS

    # -------------------------------------------------------------------- decoder
    def _decode(self, s: Scope, tokens_BxT, encoded, enc_mask_BxS, cache=None):
        """Decoder logits [B, T, V]; with `cache`, the T tokens sit at positions cache['index']..+T."""
        x, new_cache = self._decode_hidden(s, tokens_BxT, encoded, enc_mask_BxS, cache)
        return self._logits(s, x), new_cache

    def _decode_hidden(self, s: Scope, tokens_BxT, encoded, enc_mask_BxS, cache=None):
        """Final decoder states [B, T, D] (after the last norm and dropout) and the updated cache."""
        c = self.config
        dec = s.child("decoder")
        b, t = tokens_BxT.shape
        x = dec.dropout(self._embed(s, tokens_BxT, "decoder"), c.dropout_rate, "embed")
        index = 0 if cache is None else cache["index"][0]
        q_pos = index + jnp.arange(t)
        k_pos = q_pos if cache is None else jnp.arange(cache["layers_0"]["self"]["k"].shape[1])
        bias = L.relative_bias(dec.child("relpos_bias"), q_pos, k_pos, False, c.relative_attention_num_buckets,
                               c.relative_attention_max_distance)
        self_mask = jnp.broadcast_to(k_pos[None, None, :] <= q_pos[None, :, None], (b, t, k_pos.shape[0]))
        # One row per example even when the decoder runs r beams per example (see `expand_beams`).
        cross_mask = jnp.broadcast_to(enc_mask_BxS[:, None, :], (enc_mask_BxS.shape[0], t, enc_mask_BxS.shape[1]))
        new_cache = None if cache is None else {"index": cache["index"] + t}
        for i in range(c.num_decoder_layers):
            key = f"layers_{i}"
            layer = dec.child(key)
            lc = None if cache is None else cache[key]
            sa = lambda h: self._attention(layer.child("self_attention"), h, h, bias, self_mask,
                                           None if lc is None else lc["self"], index)
            x, self_c = self._sublayer(x, layer, "pre_self_attention_layer_norm", sa, "attention_adapter", "sa")
            ca = lambda h: self._attention(layer.child("encoder_decoder_attention", "cross"), h, encoded, None,
                                           cross_mask, None if lc is None else lc["cross"])
            x, cross_c = self._sublayer(x, layer, "pre_cross_attention_layer_norm", ca, "cross_adapter", "ca")
            x, _ = self._sublayer(x, layer, "pre_mlp_layer_norm", self._mlp(layer), "mlp_adapter", "mlp_out")
            if cache is not None:
                new_cache[key] = {"self": self_c, "cross": cross_c}
        x = L.rms_norm(x, dec.child("decoder_norm"), c.layer_norm_epsilon)
        return dec.dropout(x, c.dropout_rate, "final"), new_cache

    def _logits(self, s: Scope, x_BxTxD):
        c = self.config
        if c.tie_word_embeddings:  # T5 v1.0: shared embedding, rescaled
            table = s.child("token_embedder").param("embedding")
            return (x_BxTxD * c.d_model**-0.5 @ table.T).astype(jnp.float32)
        return s.child("decoder").child("logits_dense", "logits").linear(x_BxTxD).astype(jnp.float32)

    # ----------------------------------------------------------------- public API
    def logits(self, params, batch: dict, peft=None, *, dropout_rng=None) -> jax.Array:
        """Teacher-forced float32 logits [B, T, V] for a t5x-style batch."""
        check_token_ids(batch, self.LOGITS_KEYS, self.config.vocab_size)
        s = self._scope(params, peft, dropout_rng)
        encoded, mask = self._encode(s, batch["encoder_input_tokens"])
        return self._decode(s, batch["decoder_input_tokens"], encoded, mask)[0]

    def hidden(self, params, batch: dict, peft=None, *, dropout_rng=None) -> jax.Array:
        """Teacher-forced final decoder states [B, T, D]: what the output head of `logits` reads."""
        s = self._scope(params, peft, dropout_rng)
        encoded, mask = self._encode(s, batch["encoder_input_tokens"])
        return self._decode_hidden(s, batch["decoder_input_tokens"], encoded, mask)[0]

    def frozen_head(self, params, peft=None) -> L.Head | None:
        """The output projection as a plain kernel, or None when a PEFT module changes it."""
        c, s = self.config, self._scope(params, peft)
        if c.tie_word_embeddings:
            if s.child("token_embedder").active:
                return None
            return L.Head(params["token_embedder"]["embedding"].astype(self.dtype), True, c.d_model**-0.5)
        if s.child("decoder").child("logits_dense").active:
            return None
        return L.Head(params["decoder"]["logits_dense"]["kernel"].astype(self.dtype), False, None)

    # ------------------------------------------------------------------- decoding
    def decode_inputs(self, batch: dict) -> dict:
        """The encoder input tokens."""
        return {"encoder_input_tokens": token_array(batch, "encoder_input_tokens")}

    def decode_start(self, inputs: dict) -> DecodeStart:
        """Decoding starts from `decoder_start_id`, one prompt token per row; the encoder reads the inputs."""
        enc = inputs["encoder_input_tokens"]
        prompt = jnp.full((enc.shape[0], 1), self.config.decoder_start_id, jnp.int32)
        return DecodeStart(prompt, jnp.ones((enc.shape[0],), jnp.int32), {"encoder_input_tokens": enc})

    def decode_init(self, params, batch: dict, max_decode_len: int, peft=None) -> dict:
        """Decoding state: encoder output, its mask, per-layer KV caches and cross K/V (computed once)."""
        c = self.config
        s = self._scope(params, peft)
        encoded, mask = self._encode(s, batch["encoder_input_tokens"])
        b = encoded.shape[0]
        state: dict[str, Any] = {"index": jnp.zeros((b,), jnp.int32), "encoder_mask": mask}
        dec = s.child("decoder")
        for i in range(c.num_decoder_layers):
            k, v = self._key_value(dec.child(f"layers_{i}").child("encoder_decoder_attention", "cross"), encoded)
            zeros = jnp.zeros((b, max_decode_len, c.num_heads, c.d_kv), s.dtype)
            state[f"layers_{i}"] = {"self": {"k": zeros, "v": zeros}, "cross": {"cross_k": k, "cross_v": v}}
        return state

    def expand_beams(self, state: dict, k: int) -> dict:
        """The state for k beams per example: self-attention caches repeated per beam; the encoder's
        cross K/V and mask kept once per example (every beam of a row attends to the same encoding)."""
        rep = lambda x: jnp.repeat(x, k, axis=0)
        out = {"index": rep(state["index"]), "encoder_mask": state["encoder_mask"]}
        for key, layer in state.items():
            if key.startswith("layers_"):
                out[key] = {"self": jax.tree.map(rep, layer["self"]), "cross": layer["cross"]}
        return out

    def decode_step(self, params, state: dict, tokens_BxT, peft=None):
        """Logits [B, T, V] for T new decoder tokens and the advanced state."""
        dummy_encoded = None  # cross K/V come from the state
        logits, new = self._decode(self._scope(params, peft), tokens_BxT, dummy_encoded, state["encoder_mask"], state)
        new["encoder_mask"] = state["encoder_mask"]
        return logits, new

    # ------------------------------------------------------------ data and prompts
    @classmethod
    def pair_features(cls, input_ids, target_ids, input_len: int, target_len: int, *, eos_id: int, pad_id: int,
                      decoder_start_id: int | None = None, prefix: bool = True) -> dict[str, np.ndarray]:
        """Encoder inputs + EOS, decoder targets + EOS shifted right behind `decoder_start_id`. The encoder
        reads its input bidirectionally: prefix=False (causal attention over the input) is refused."""
        if not prefix:
            raise ValueError("an encoder-decoder model reads its input with a bidirectional encoder; causal "
                             "attention over the input (prefix=False) applies to decoder-only models")
        return preprocess.seq2seq_features(input_ids, target_ids, input_len, target_len, eos_id=eos_id,
                                           pad_id=pad_id, decoder_start_id=decoder_start_id)

    @property
    def decoder_start_id(self) -> int:
        return self.config.decoder_start_id

    def prompt_features(self, token_lists, max_input_len: int, *, pad_id: int, eos_id: int,
                        prefix: bool = True) -> dict[str, np.ndarray]:
        """Encoder inputs for generation: each token list trimmed, EOS appended, right-padded (the encoder
        reads them bidirectionally whatever `prefix` says)."""
        rows = [[int(t) for t in ids[: max_input_len - 1]] + [eos_id] for ids in token_lists]
        return {"encoder_input_tokens": right_padded(rows, max_input_len, pad_id)}

    def hf_param_names(self) -> hf_names.Names:
        return hf_names.t5_names(self.config)


def _attend_shared_kv(q_NxTxHxK, k_BxSxHxK, v_BxSxHxK, mask_BxTxS):
    """Attention of N = B*r query rows (r beams per example, beam-major within a row) to K/V held once
    per example: the r beams become r*T query positions of their example."""
    n, t, h, kd = q_NxTxHxK.shape
    b = k_BxSxHxK.shape[0]
    r = n // b
    q = q_NxTxHxK.reshape(b, r * t, h, kd)
    out = L.attend(q, k_BxSxHxK, v_BxSxHxK, None, jnp.tile(mask_BxTxS, (1, r, 1)), scale=1.0)
    return out.reshape(n, t, h * kd)
