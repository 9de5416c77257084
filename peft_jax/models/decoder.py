"""PaLM-style decoder-only language model as pure functions of explicit parameter trees.

Defaults follow PaLM: parallel attention + MLP block, SwiGLU, multi-query
attention, RoPE, no biases, shared input/output embedding, optional z-loss (in
the training losses). Knobs (block style, activation, KV heads, norm offset,
embedding scale, tying) express Llama and Gemma too, so their Hugging Face
checkpoints load (`peft_jax.models.hf`, names in `peft_jax.models.hf_names`).
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
from peft_jax.models.base import DECODER_KEYS, DecodeStart, Model, right_padded, token_array
from peft_jax.models.errors import CheckpointError, DecodeError
from peft_jax.models.spec import ParamSpec
from peft_jax.peft.scope import Scope

PREFIX_LM_KEYS = DECODER_KEYS + ("decoder_causal_attention", "decoder_loss_weights")


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    """Dimensions and architectural switches of the decoder-only family."""

    vocab_size: int
    d_model: int
    num_heads: int
    head_dim: int
    d_ff: int
    num_layers: int
    num_kv_heads: int = 1  # 1 = multi-query (PaLM); num_heads = multi-head; between = grouped-query
    block: str = "parallel"  # parallel (PaLM) | sequential (Llama, Gemma)
    activation: str = "silu"  # silu = SwiGLU | gelu = GeGLU
    norm_eps: float = 1e-6
    norm_plus_one: bool = False  # Gemma's RMSNorm multiplies by (1 + scale)
    embed_scale: bool = False  # Gemma multiplies embeddings by sqrt(d_model)
    tie_word_embeddings: bool = True
    rope_theta: float = 10000.0
    query_scale: float | None = None  # None: head_dim ** -0.5
    z_loss: float = 0.0
    dropout_rate: float = 0.0
    dtype: str = "float32"
    pad_id: int = 0
    eos_id: int = 1
    bos_id: int | None = None

    def __post_init__(self):
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}")
        if self.block not in ("parallel", "sequential"):
            raise ValueError(f"block must be parallel|sequential, got {self.block!r}")


@dataclasses.dataclass(frozen=True)
class DecoderModel(Model):
    """The decoder-only model. Hashable, so it can be closed over by jitted functions."""

    config: DecoderConfig
    family: str = dataclasses.field(default="decoder_only", init=False)

    CONFIG_CLASS = DecoderConfig
    OBJECTIVES = {"causal_lm": DECODER_KEYS, "prefix_lm": PREFIX_LM_KEYS, "seq2seq": PREFIX_LM_KEYS}
    LOGITS_KEYS = ("decoder_input_tokens",)
    HF_TASK_TYPE = "CAUSAL_LM"

    def param_specs(self) -> dict:
        c = self.config
        hq, hkv, d = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim, c.d_model
        norm = lambda: {"scale": ParamSpec((d,), ("embed",), init="zeros" if c.norm_plus_one else "ones")}
        layer = {
            "attention": {
                "query": {"kernel": ParamSpec((d, hq), ("embed", "heads"), stddev=d**-0.5)},
                "key": {"kernel": ParamSpec((d, hkv), ("embed", "kv_heads"), stddev=d**-0.5)},
                "value": {"kernel": ParamSpec((d, hkv), ("embed", "kv_heads"), stddev=d**-0.5)},
                "out": {"kernel": ParamSpec((hq, d), ("heads", "embed"), stddev=hq**-0.5)},
            },
            "mlp": {
                "wi_0": {"kernel": ParamSpec((d, c.d_ff), ("embed", "mlp"), stddev=d**-0.5)},
                "wi_1": {"kernel": ParamSpec((d, c.d_ff), ("embed", "mlp"), stddev=d**-0.5)},
                "wo": {"kernel": ParamSpec((c.d_ff, d), ("mlp", "embed"), stddev=c.d_ff**-0.5)},
            },
        }
        if c.block == "parallel":
            layer["pre_norm"] = norm()
        else:
            layer.update(pre_attention_norm=norm(), pre_mlp_norm=norm())
        specs = {f"layers_{i}": layer for i in range(c.num_layers)}
        # A tied table also projects to logits: unit-variance rows would give logits of scale sqrt(d) at init.
        emb_std = d**-0.5 if c.tie_word_embeddings and not c.embed_scale else 1.0
        specs["token_embedder"] = {"embedding": ParamSpec((c.vocab_size, d), ("vocab", "embed"), stddev=emb_std)}
        specs["final_norm"] = norm()
        if not c.tie_word_embeddings:
            specs["logits_dense"] = {"kernel": ParamSpec((d, c.vocab_size), ("embed", "vocab"), stddev=d**-0.5)}
        return specs

    def _scope(self, params, peft, dropout_rng=None) -> Scope:
        return Scope.root(params, peft, self.dtype, dropout_rng)

    # ------------------------------------------------------------------ layers
    def _norm(self, x, s: Scope, key):
        c = self.config
        return L.rms_norm(x, s.child(key), c.norm_eps, c.norm_plus_one)

    def _attention(self, s: Scope, x_BxTxD, pos_BxT, mask_BxTxS, cache, index):
        c = self.config
        q = L.rope(L.split_heads(s.child("query").linear(x_BxTxD), c.num_heads), pos_BxT, c.rope_theta)
        k = L.rope(L.split_heads(s.child("key").linear(x_BxTxD), c.num_kv_heads), pos_BxT, c.rope_theta)
        v = L.split_heads(s.child("value").linear(x_BxTxD), c.num_kv_heads)
        new_cache = None
        if cache is not None:
            k, v = L.update_cache(cache["k"], k, index), L.update_cache(cache["v"], v, index)
            new_cache = {"k": k, "v": v}
        scale = c.query_scale if c.query_scale is not None else c.head_dim**-0.5
        out = L.attend(q, k, v, None, mask_BxTxS, scale)
        return s.child("out").linear(out), new_cache

    def _layer(self, x, s: Scope, pos, mask, cache, index):
        c = self.config
        mlp = lambda h: L.gated_mlp(h, s.child("mlp"), c.activation, c.dropout_rate)
        attn = lambda h: self._attention(s.child("attention"), h, pos, mask, cache, index)
        drop = lambda y, site: s.dropout(y, c.dropout_rate, site)
        if c.block == "parallel":  # PaLM: attention and MLP read the same normalised input
            h = self._norm(x, s, "pre_norm")
            a, new_cache = attn(h)
            a = s.adapters(drop(a, "attn"), "attention_adapter")
            m = s.adapters(drop(mlp(h), "mlp"), "mlp_adapter")
            return x + a + m, new_cache
        a, new_cache = attn(self._norm(x, s, "pre_attention_norm"))
        x = x + s.adapters(drop(a, "attn"), "attention_adapter")
        m = mlp(self._norm(x, s, "pre_mlp_norm"))
        return x + s.adapters(drop(m, "mlp"), "mlp_adapter"), new_cache

    def _embed(self, s: Scope, tokens_BxT):
        c = self.config
        x = s.child("token_embedder").param("embedding")[tokens_BxT]
        if c.embed_scale:
            x = x * jnp.asarray(c.d_model**0.5, s.dtype)
        return x

    def _forward(self, s: Scope, x_BxTxD, pos_BxT, mask_BxTxS, cache=None, index=0):
        x, new_cache = self._forward_hidden(s, x_BxTxD, pos_BxT, mask_BxTxS, cache, index)
        return self._logits(s, x), new_cache

    def _forward_hidden(self, s: Scope, x_BxTxD, pos_BxT, mask_BxTxS, cache=None, index=0):
        """Final states [B, T, D] (after the final norm) and the updated cache."""
        c = self.config
        x = s.dropout(x_BxTxD, c.dropout_rate, "embed")
        new_cache = None if cache is None else {}
        for i in range(c.num_layers):
            key = f"layers_{i}"
            x, lc = self._layer(x, s.child(key), pos_BxT, mask_BxTxS, None if cache is None else cache[key], index)
            if cache is not None:
                new_cache[key] = lc
        return self._norm(x, s, "final_norm"), new_cache

    def _logits(self, s: Scope, x_BxTxD):
        if self.config.tie_word_embeddings:
            table = s.child("token_embedder").param("embedding")
            return (x_BxTxD @ table.T).astype(jnp.float32)
        return s.child("logits_dense", "logits").linear(x_BxTxD).astype(jnp.float32)

    # ---------------------------------------------------------------- public API
    def logits(self, params, batch: dict, peft=None, *, dropout_rng=None) -> jax.Array:
        """Float32 logits [B, T, V] for `decoder_input_tokens` (prefix-LM if `decoder_causal_attention`)."""
        s = self._scope(params, peft, dropout_rng)
        return self._logits(s, self._hidden(s, batch))

    def hidden(self, params, batch: dict, peft=None, *, dropout_rng=None) -> jax.Array:
        """Final states [B, T, D] of the input tokens (soft-prompt positions dropped): what `logits` projects."""
        return self._hidden(self._scope(params, peft, dropout_rng), batch)

    def _hidden(self, s: Scope, batch: dict) -> jax.Array:
        tokens = batch["decoder_input_tokens"]
        b, t = tokens.shape
        x = self._embed(s, tokens)
        prefix = batch.get("decoder_causal_attention")
        prefix = jnp.zeros((b, t), bool) if prefix is None else prefix.astype(bool)
        prompt = s.prompts(b)
        p_len = 0
        if prompt is not None:  # soft prompt prepended, read causally (as the KV-cached decoder writes it)
            p_len = prompt.shape[1]
            x = jnp.concatenate([prompt, x], axis=1)
            prefix = jnp.concatenate([jnp.zeros((b, p_len), bool), prefix], axis=1)
        n = t + p_len
        pos = jnp.broadcast_to(jnp.arange(n), (b, n))
        causal = jnp.arange(n)[None, :, None] >= jnp.arange(n)[None, None, :]
        mask = causal | (prefix[:, :, None] & prefix[:, None, :])
        return self._forward_hidden(s, x, pos, mask)[0][:, p_len:]

    def frozen_head(self, params, peft=None) -> L.Head | None:
        """The output projection as a plain kernel, or None when a PEFT module changes it."""
        s = self._scope(params, peft)
        if self.config.tie_word_embeddings:
            if s.child("token_embedder").active:
                return None
            return L.Head(params["token_embedder"]["embedding"].astype(self.dtype), True, None)
        if s.child("logits_dense").active:
            return None
        return L.Head(params["logits_dense"]["kernel"].astype(self.dtype), False, None)

    # ------------------------------------------------------------------- decoding
    def decode_inputs(self, batch: dict) -> dict:
        """The right-padded prompts and their lengths (`decoder_prompt_lengths`, or the non-pad tokens)."""
        tokens = token_array(batch, "decoder_input_tokens")
        return {"prompt": tokens, "prompt_lengths": _prompt_lengths(batch, tokens, self.config.pad_id)}

    def decode_start(self, inputs: dict) -> DecodeStart:
        """Decoding continues the prompts; they are consumed token by token (the cache starts empty)."""
        prompt = inputs["prompt"].astype(jnp.int32)
        return DecodeStart(prompt, inputs["prompt_lengths"], {"decoder_input_tokens": prompt})

    def decode_init(self, params, batch: dict | None, max_decode_len: int, peft=None) -> dict:
        """Empty KV caches (soft prompts, if any, already written): positions start after them."""
        c = self.config
        s = self._scope(params, peft)
        b = _batch_size(batch)
        prompt = s.prompts(b)
        p_len = 0 if prompt is None else prompt.shape[1]
        zeros = jnp.zeros((b, max_decode_len + p_len, c.num_kv_heads, c.head_dim), s.dtype)
        state: dict[str, Any] = {f"layers_{i}": {"k": zeros, "v": zeros} for i in range(c.num_layers)}
        state["index"] = jnp.zeros((b,), jnp.int32)
        if prompt is not None:
            _, state = self._step(s, state, prompt)
        return state

    def decode_step(self, params, state: dict, tokens_BxT, peft=None):
        """Logits [B, T, V] for T new tokens at the state's position, and the advanced state."""
        s = self._scope(params, peft)
        return self._step(s, state, self._embed(s, tokens_BxT))

    def expand_beams(self, state: dict, k: int) -> dict:
        """The state for k beams per example: every cache row repeated per beam."""
        return jax.tree.map(lambda x: jnp.repeat(x, k, axis=0), state)

    def _step(self, s: Scope, state, x_BxTxD):
        b, t = x_BxTxD.shape[:2]
        index = state["index"][0]
        q_pos = index + jnp.arange(t)
        n = state["layers_0"]["k"].shape[1]
        mask = jnp.broadcast_to(jnp.arange(n)[None, None, :] <= q_pos[None, :, None], (b, t, n))
        pos = jnp.broadcast_to(q_pos, (b, t))
        logits, cache = self._forward(s, x_BxTxD, pos, mask, state, index)
        cache["index"] = state["index"] + t
        return logits, cache

    # ------------------------------------------------------------ data and prompts
    @classmethod
    def pair_features(cls, input_ids, target_ids, input_len: int, target_len: int, *, eos_id: int, pad_id: int,
                      decoder_start_id: int | None = None) -> dict[str, np.ndarray]:
        """Prefix-LM features: `[inputs + EOS, targets + EOS]` in one sequence of `input_len` tokens, the
        targets given up to `target_len` of them; only the targets are scored."""
        return preprocess.prefix_lm_features(input_ids, target_ids, input_len, max_target_len=target_len,
                                             eos_id=eos_id, pad_id=pad_id, decoder_start_id=decoder_start_id)

    def prompt_features(self, token_lists, max_input_len: int, *, pad_id: int, eos_id: int) -> dict[str, np.ndarray]:
        """Right-padded prompts `[pad] + text[:max_input_len - 2] + [eos]` and their lengths.

        The layout of prefix-LM training (`pair_features` shifts [inputs, EOS, targets] right behind a
        start token, the pad id), so decoding continues where training's targets begin.
        """
        prompts = [[pad_id] + [int(t) for t in ids[: max_input_len - 2]] + [eos_id] for ids in token_lists]
        return {"decoder_input_tokens": right_padded(prompts, max_input_len, pad_id),
                "decoder_prompt_lengths": np.array([len(p) for p in prompts], np.int32)}

    def hf_param_names(self) -> hf_names.Names:
        if self.config.block != "sequential":
            raise CheckpointError("only sequential-block (Llama/Gemma layout) decoders have a Hugging Face "
                                  "counterpart")
        return hf_names.decoder_names(self.config)


def _batch_size(batch) -> int:
    for key in ("decoder_input_tokens", "decoder_target_tokens", "encoder_input_tokens"):
        if batch and key in batch:
            return batch[key].shape[0]
    if batch and "batch_size" in batch:
        return int(batch["batch_size"])
    raise ValueError("decode_init needs a batch with decoder_input_tokens (or {'batch_size': B})")


def _prompt_lengths(batch, tokens, pad_id: int) -> jax.Array:
    """Per-row prompt lengths: `decoder_prompt_lengths` or the count of non-pad tokens (checked)."""
    explicit = "decoder_prompt_lengths" in batch
    if explicit:
        lengths = jnp.asarray(batch["decoder_prompt_lengths"], jnp.int32)
        if lengths.shape != tokens.shape[:1]:
            raise DecodeError(f"decoder_prompt_lengths has shape {lengths.shape}, expected ({tokens.shape[0]},)")
    else:
        lengths = jnp.sum(tokens != pad_id, axis=1, dtype=jnp.int32)
    # Without explicit lengths, a pad before a real token means left padding or a hole: refuse it.
    holes = jnp.any((jnp.arange(tokens.shape[1])[None, :] < lengths[:, None]) & (tokens == pad_id))
    lo, hi, bad = (int(v) for v in jax.device_get((jnp.min(lengths), jnp.max(lengths), holes)))
    if lo < 1 or hi > tokens.shape[1]:
        raise DecodeError(f"decoder-only prompts need 1..{tokens.shape[1]} tokens per row (a BOS token at least); "
                          f"got lengths in [{lo}, {hi}]")
    if bad and not explicit:
        raise DecodeError("decoder_input_tokens must hold right-padded prompts (pad only after the prompt); "
                          "pass decoder_prompt_lengths if the pad id occurs inside a prompt")
    return lengths
