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
from peft_jax.models import hf_names, prompts
from peft_jax.models import layers as L
from peft_jax.models.base import (DECODER_KEYS, DecodeStart, Model, check_token_ids, first_decode_position,
                                  right_padded, token_array)
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
    activation: str = "silu"  # silu = SwiGLU | gelu = GeGLU (tanh) | gelu_exact | relu (`layers.ACTIVATIONS`)
    norm_eps: float = 1e-6
    norm_plus_one: bool = False  # Gemma's RMSNorm multiplies by (1 + scale)
    embed_scale: bool = False  # Gemma multiplies embeddings by sqrt(d_model)
    tie_word_embeddings: bool = True
    rope_theta: float = 10000.0
    # RoPE scaling as in Hugging Face configs: default | linear (factor) | llama3 (all four numbers).
    rope_scaling: str = "default"
    rope_factor: float = 1.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_positions: int = 8192
    query_scale: float | None = None  # None: head_dim ** -0.5
    post_norms: bool = False  # Gemma 2: RMSNorm also on the attention and MLP outputs (sequential block)
    attn_softcap: float | None = None  # Gemma 2: scores -> cap * tanh(scores / cap)
    final_softcap: float | None = None  # Gemma 2: the same on the output logits
    sliding_window: int | None = None  # layers marked "sliding" attend to the last `sliding_window` positions
    layer_types: tuple[str, ...] | None = None  # per layer "full" | "sliding"; None: all full
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
        if self.activation not in L.ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(L.ACTIVATIONS)}, got {self.activation!r}")
        if self.post_norms and self.block != "sequential":
            raise ValueError("post_norms needs the sequential block")
        if self.layer_types is not None:  # a JSON round trip gives a list; the config must stay hashable
            object.__setattr__(self, "layer_types", tuple(self.layer_types))
            if len(self.layer_types) != self.num_layers or set(self.layer_types) - {"full", "sliding"}:
                raise ValueError(f"layer_types must give 'full' or 'sliding' for each of the {self.num_layers} "
                                 f"layers, got {self.layer_types}")
            if "sliding" in self.layer_types and not self.sliding_window:
                raise ValueError("sliding layers need a positive sliding_window")
        if self.rope_scaling not in L.ROPE_SCALINGS:
            raise ValueError(f"rope_scaling must be one of {L.ROPE_SCALINGS}, got {self.rope_scaling!r}")

    def rope_args(self) -> tuple:
        """The scaling arguments of `layers.rope_frequencies` after head_dim and theta."""
        return (self.rope_scaling, self.rope_factor, self.rope_low_freq_factor, self.rope_high_freq_factor,
                self.rope_original_max_positions)


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
            if c.post_norms:
                layer.update(post_attention_norm=norm(), post_mlp_norm=norm())
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
        inv_freq = L.rope_frequencies(c.head_dim, c.rope_theta, *c.rope_args())
        q = L.rope(L.split_heads(s.child("query").linear(x_BxTxD), c.num_heads), pos_BxT, inv_freq)
        k = L.rope(L.split_heads(s.child("key").linear(x_BxTxD), c.num_kv_heads), pos_BxT, inv_freq)
        v = L.split_heads(s.child("value").linear(x_BxTxD), c.num_kv_heads)
        new_cache = None
        if cache is not None:
            k, v = L.update_cache(cache["k"], k, index), L.update_cache(cache["v"], v, index)
            new_cache = {"k": k, "v": v}
        scale = c.query_scale if c.query_scale is not None else c.head_dim**-0.5
        out = L.attend(q, k, v, None, mask_BxTxS, scale, c.attn_softcap)
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
        if c.post_norms:
            a = self._norm(a, s, "post_attention_norm")
        x = x + s.adapters(drop(a, "attn"), "attention_adapter")
        m = mlp(self._norm(x, s, "pre_mlp_norm"))
        if c.post_norms:
            m = self._norm(m, s, "post_mlp_norm")
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
            x, lc = self._layer(x, s.child(key), pos_BxT, self._layer_mask(i, pos_BxT, mask_BxTxS),
                                None if cache is None else cache[key], index)
            if cache is not None:
                new_cache[key] = lc
        return self._norm(x, s, "final_norm"), new_cache

    def _layer_mask(self, i: int, pos_BxT, mask_BxTxS):
        """The attention mask of layer i: a sliding layer also drops keys `sliding_window` or more
        positions back. Key j sits at position j both in a full pass and in the KV cache."""
        c = self.config
        if c.layer_types is None or c.layer_types[i] != "sliding":
            return mask_BxTxS
        near = pos_BxT[:, :, None] - jnp.arange(mask_BxTxS.shape[-1])[None, None, :] < c.sliding_window
        return mask_BxTxS & near

    def _logits(self, s: Scope, x_BxTxD):
        if self.config.tie_word_embeddings:
            table = s.child("token_embedder").param("embedding")
            out = (x_BxTxD @ table.T).astype(jnp.float32)
        else:
            out = s.child("logits_dense", "logits").linear(x_BxTxD).astype(jnp.float32)
        return L.softcap(out, self.config.final_softcap)

    # ---------------------------------------------------------------- public API
    def logits(self, params, batch: dict, peft=None, *, dropout_rng=None) -> jax.Array:
        """Float32 logits [B, T, V] for `decoder_input_tokens` (prefix-LM if `decoder_causal_attention`)."""
        check_token_ids(batch, self.LOGITS_KEYS, self.config.vocab_size)
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
        mask = prompts.prefix_lm_mask(jnp.arange(n), jnp.arange(n), prefix, prefix)
        return self._forward_hidden(s, x, pos, mask)[0][:, p_len:]

    def frozen_head(self, params, peft=None) -> L.Head | None:
        """The output projection as a plain kernel, or None when a PEFT module changes it."""
        s = self._scope(params, peft)
        if self.config.final_softcap is not None:  # the soft-cap is not a plain projection
            return None
        if self.config.tie_word_embeddings:
            if s.child("token_embedder").active:
                return None
            return L.Head(params["token_embedder"]["embedding"].astype(self.dtype), True, None)
        if s.child("logits_dense").active:
            return None
        return L.Head(params["logits_dense"]["kernel"].astype(self.dtype), False, None)

    # ------------------------------------------------------------------- decoding
    def decode_inputs(self, batch: dict) -> dict:
        """The right-padded prompts, their lengths (`decoder_prompt_lengths`, or the non-pad tokens) and
        their bidirectional prefix (`decoder_causal_attention`, as in prefix-LM training; none: causal)."""
        tokens = token_array(batch, "decoder_input_tokens")
        lengths = prompts.prompt_lengths(batch, tokens, self.config.pad_id)
        return {"prompt": tokens, "prompt_lengths": lengths, "prefix": prompts.prompt_prefix(batch, tokens, lengths)}

    def decode_start(self, inputs: dict) -> DecodeStart:
        """Decoding continues the prompts, which `decode_init` reads in one pass with their prefix mask."""
        prompt = inputs["prompt"].astype(jnp.int32)
        return DecodeStart(prompt, inputs["prompt_lengths"],
                           {"decoder_input_tokens": prompt, "decoder_prompt_lengths": inputs["prompt_lengths"],
                            "decoder_causal_attention": inputs["prefix"]})

    def decode_init(self, params, batch: dict | None, max_decode_len: int, peft=None) -> dict:
        """KV caches for `max_decode_len` positions after the soft prompts (if any, already written).

        Given `decoder_prompt_lengths` (what `decode_start` passes), the prompts are read too, in one
        pass with the mask training used: causal, plus `decoder_causal_attention`'s bidirectional
        prefix. The state then sits at `base.first_decode_position` (the last prompt position every row
        has); the cached prompt positions are never overwritten by later steps, so rows with longer
        prompts keep the prefix-attended keys and values while their remaining prompt tokens are fed.
        Without lengths, the caches start empty at position 0.
        """
        c = self.config
        s = self._scope(params, peft)
        b = _batch_size(batch)
        prompt = s.prompts(b)
        p_len = 0 if prompt is None else prompt.shape[1]
        zeros = jnp.zeros((b, max_decode_len + p_len, c.num_kv_heads, c.head_dim), s.dtype)
        state: dict[str, Any] = {f"layers_{i}": {"k": zeros, "v": zeros} for i in range(c.num_layers)}
        state["index"] = jnp.zeros((b,), jnp.int32)
        state["filled"] = jnp.zeros((b,), jnp.int32)  # cache positions below this are final (per row)
        if prompt is not None:
            _, state = self._step(s, state, prompt)
            state["filled"] = state["index"]
        if batch and "decoder_prompt_lengths" in batch:
            state = self._prefill(s, state, batch, max_decode_len)
        return state

    def _prefill(self, s: Scope, state, batch, max_decode_len: int):
        """Writes the prompts' keys and values at the state's position in one masked pass."""
        tokens = batch["decoder_input_tokens"]
        lengths = jnp.asarray(batch["decoder_prompt_lengths"], jnp.int32)
        b, p = tokens.shape
        start = state["index"][0]  # after the soft prompt
        n = state["layers_0"]["k"].shape[1]
        if p > max_decode_len:
            raise DecodeError(f"decode_init: prompts of {p} positions do not fit a cache of max_decode_len="
                              f"{max_decode_len} decoder positions")
        prefix = batch.get("decoder_causal_attention")
        prefix = jnp.zeros((b, p), bool) if prefix is None else jnp.asarray(prefix).astype(bool)
        prefix_k = jax.lax.dynamic_update_slice_in_dim(jnp.zeros((b, n), bool), prefix, start, axis=1)
        q_pos = start + jnp.arange(p)
        mask = prompts.prefix_lm_mask(q_pos, jnp.arange(n), prefix, prefix_k)
        _, cache = self._forward_hidden(s, self._embed(s, tokens), jnp.broadcast_to(q_pos, (b, p)), mask, state,
                                        start)
        cache["filled"] = start + lengths
        cache["index"] = jnp.broadcast_to(start + first_decode_position(lengths), (b,)).astype(jnp.int32)
        return cache

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
        mask = jnp.broadcast_to(prompts.prefix_lm_mask(q_pos, jnp.arange(n), None, None), (b, t, n))
        pos = jnp.broadcast_to(q_pos, (b, t))
        logits, cache = self._forward(s, x_BxTxD, pos, mask, state, index)
        if "filled" in state:  # prompt positions read by the prefill keep their (prefix-attended) keys/values
            cache = {k: prompts.keep_filled(state[k], v, state["filled"], index, t) for k, v in cache.items()}
            cache["filled"] = state["filled"]
        cache["index"] = state["index"] + t
        return logits, cache

    # ------------------------------------------------------------ data and prompts
    @property
    def decoder_start_id(self) -> int:
        """The token every sequence starts with: the checkpoint's BOS, else its EOS (a document boundary
        the base has seen; never the pad id)."""
        c = self.config
        return c.eos_id if c.bos_id is None else c.bos_id

    @classmethod
    def pair_features(cls, input_ids, target_ids, input_len: int, target_len: int, *, eos_id: int, pad_id: int,
                      decoder_start_id: int | None = None, prefix: bool = True) -> dict[str, np.ndarray]:
        """`[start, inputs, EOS, targets]` -> `[inputs, EOS, targets, EOS]` in one sequence of `input_len`
        tokens; only the targets are scored. The targets get up to `target_len` of them; the prompt
        (start, inputs, EOS) always gets `input_len - target_len`, the budget `prompt_features` gives the
        same text at decoding. prefix=True: the prompt is attended bidirectionally (prefix LM, t5x);
        False: causal attention everywhere."""
        return preprocess.prefix_lm_features(input_ids, target_ids, input_len, max_target_len=target_len,
                                             max_input_len=input_len - target_len - 1, eos_id=eos_id, pad_id=pad_id,
                                             decoder_start_id=decoder_start_id, prefix=prefix)

    def prompt_features(self, token_lists, max_input_len: int, *, pad_id: int, eos_id: int,
                        prefix: bool = True) -> dict[str, np.ndarray]:
        """Right-padded prompts `[start] + text[:max_input_len - 2] + [EOS]`, their lengths and, with
        `prefix`, their bidirectional prefix (`decoder_causal_attention` over the whole prompt).

        The start of `pair_features(text, summary, max_input_len + target_len, target_len)`: the same
        start token (`decoder_start_id`), text budget and attention, so decoding continues where
        training's targets begin.
        """
        if max_input_len < 2:
            raise ValueError(f"max_input_len={max_input_len} leaves no room for the start token and EOS")
        rows = [preprocess.decoder_prompt(ids, max_input_len, start_id=self.decoder_start_id, eos_id=eos_id)
                for ids in token_lists]
        lengths = np.array([len(r) for r in rows], np.int32)
        feats = {"decoder_input_tokens": right_padded(rows, max_input_len, pad_id), "decoder_prompt_lengths": lengths}
        if prefix:
            feats["decoder_causal_attention"] = (np.arange(max_input_len)[None, :] < lengths[:, None]).astype(np.int32)
        return feats

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
