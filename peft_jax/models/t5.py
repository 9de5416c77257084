"""mT5 / T5 v1.1 encoder-decoder as pure functions of explicit parameter trees.

RMSNorm without bias, relative-position buckets (bidirectional in the encoder,
causal in the decoder, one table per stack shared by all its layers), gated-GELU
MLP, no scaling of attention logits, untied LM head (tied T5 v1.0 style as an
option). Parameter names follow t5x; `peft_jax.models.hf` maps Hugging Face names.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from peft_jax.models import layers as L
from peft_jax.models.spec import ParamSpec, SpecModel
from peft_jax.peft import apply as pa


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


@dataclasses.dataclass(frozen=True)
class T5Model(SpecModel):
    """The encoder-decoder. Hashable, so it can be closed over by jitted functions."""

    config: T5Config
    family: str = dataclasses.field(default="encoder_decoder", init=False)

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
        return {"token_embedder": {"embedding": ParamSpec((c.vocab_size, c.d_model), ("vocab", "embed"))},
                "encoder": enc, "decoder": dec}

    def _ctx(self, dropout_rng) -> pa.Ctx:
        return pa.Ctx(dtype=self.dtype, rng=dropout_rng)

    # ------------------------------------------------------------------- helpers
    def _embed(self, params, views, ctx, tokens_BxT):
        table = pa.param(params["token_embedder"], "embedding", pa.child(views, "token_embedder"), ctx.dtype)
        return table[tokens_BxT]

    def _attention(self, p, views, ctx, x_BxTxD, kv_BxSxD, bias, mask, name, cache=None, index=None):
        c = self.config
        q = L.split_heads(pa.linear(x_BxTxD, p["query"], pa.child(views, "query"), ctx, name + "/query"), c.num_heads)
        if cache is not None and "cross_k" in cache:
            k, v, new_cache = cache["cross_k"], cache["cross_v"], cache
        else:
            k = L.split_heads(pa.linear(kv_BxSxD, p["key"], pa.child(views, "key"), ctx, name + "/key"), c.num_heads)
            v = L.split_heads(pa.linear(kv_BxSxD, p["value"], pa.child(views, "value"), ctx, name + "/value"),
                              c.num_heads)
            new_cache = cache
            if cache is not None:  # self-attention KV cache: write T new positions, attend over all L
                k = L.update_cache(cache["k"], k, index)
                v = L.update_cache(cache["v"], v, index)
                new_cache = {"k": k, "v": v}
        if k.shape[0] != q.shape[0]:  # cross K/V kept once per example, queries from r beams each
            out = _attend_shared_kv(q, k, v, mask)
        else:
            out = L.attend(q, k, v, bias, mask, scale=1.0)
        return pa.linear(out, p["out"], pa.child(views, "out"), ctx, name + "/out"), new_cache

    def _sublayer(self, x, p, views, ctx, norm_key, fn, adapter_key, name):
        """Pre-norm residual sub-layer with dropout and optional bottleneck adapter."""
        c = self.config
        h = L.rms_norm(x, p[norm_key], pa.child(views, norm_key), ctx, c.layer_norm_epsilon)
        y, aux = fn(h)
        y = pa.adapters(ctx.dropout(y, c.dropout_rate, name), views, adapter_key, ctx)
        return x + y, aux

    # -------------------------------------------------------------------- encoder
    def encode(self, params, encoder_input_tokens, peft=None, *, dropout_rng=None):
        """Encoder output [B, P+S, D] and its key mask [B, P+S] (P soft-prompt positions)."""
        views = pa.as_views(peft)
        return self._encode(params, views, self._ctx(dropout_rng), encoder_input_tokens)

    def _encode(self, params, views, ctx, tokens_BxS):
        c = self.config
        x = self._embed(params, views, ctx, tokens_BxS)
        mask_BxS = tokens_BxS != c.pad_id
        prompt = pa.prompts(views, tokens_BxS.shape[0], ctx.dtype)
        if prompt is not None:  # soft prompt prepended to the encoder input, always attended
            x = jnp.concatenate([prompt, x], axis=1)
            mask_BxS = jnp.concatenate([jnp.ones(prompt.shape[:2], bool), mask_BxS], axis=1)
        p, ev = params["encoder"], pa.child(views, "encoder")
        x = ctx.dropout(x, c.dropout_rate, "encoder/embed")
        pos = jnp.arange(x.shape[1])
        bias = L.relative_bias(p["relpos_bias"], pa.child(ev, "relpos_bias"), pos, pos, True,
                               c.relative_attention_num_buckets, c.relative_attention_max_distance)
        mask_BxSxS = jnp.broadcast_to(mask_BxS[:, None, :], (x.shape[0], x.shape[1], x.shape[1]))
        for i in range(c.num_layers):
            lp, lv, name = p[f"layers_{i}"], pa.child(ev, f"layers_{i}"), f"encoder/layers_{i}"
            attn = lambda h: self._attention(lp["attention"], pa.child(lv, "attention"), ctx, h, h, bias,
                                             mask_BxSxS, name + "/attention")
            x, _ = self._sublayer(x, lp, lv, ctx, "pre_attention_layer_norm", attn, "attention_adapter", name + "/attn")
            mlp = lambda h: (L.gated_mlp(h, lp["mlp"], pa.child(lv, "mlp"), ctx, c.activation, c.dropout_rate,
                                         name + "/mlp"), None)
            x, _ = self._sublayer(x, lp, lv, ctx, "pre_mlp_layer_norm", mlp, "mlp_adapter", name + "/mlp_out")
        x = L.rms_norm(x, p["encoder_norm"], pa.child(ev, "encoder_norm"), ctx, c.layer_norm_epsilon)
        return ctx.dropout(x, c.dropout_rate, "encoder/final"), mask_BxS

    # -------------------------------------------------------------------- decoder
    def _decode(self, params, views, ctx, tokens_BxT, encoded, enc_mask_BxS, cache=None):
        """Decoder logits [B, T, V]; with `cache`, the T tokens sit at positions cache['index']..+T."""
        x, new_cache = self._decode_hidden(params, views, ctx, tokens_BxT, encoded, enc_mask_BxS, cache)
        return self._logits(params, views, ctx, x), new_cache

    def _decode_hidden(self, params, views, ctx, tokens_BxT, encoded, enc_mask_BxS, cache=None):
        """Final decoder states [B, T, D] (after the last norm and dropout) and the updated cache."""
        c = self.config
        p, dv = params["decoder"], pa.child(views, "decoder")
        b, t = tokens_BxT.shape
        x = ctx.dropout(self._embed(params, views, ctx, tokens_BxT), c.dropout_rate, "decoder/embed")
        index = 0 if cache is None else cache["index"][0]
        q_pos = index + jnp.arange(t)
        k_pos = q_pos if cache is None else jnp.arange(cache["layers_0"]["self"]["k"].shape[1])
        bias = L.relative_bias(p["relpos_bias"], pa.child(dv, "relpos_bias"), q_pos, k_pos, False,
                               c.relative_attention_num_buckets, c.relative_attention_max_distance)
        self_mask = jnp.broadcast_to(k_pos[None, None, :] <= q_pos[None, :, None], (b, t, k_pos.shape[0]))
        # One row per example even when the decoder runs r beams per example (see `expand_beams`).
        cross_mask = jnp.broadcast_to(enc_mask_BxS[:, None, :], (enc_mask_BxS.shape[0], t, enc_mask_BxS.shape[1]))
        new_cache = None if cache is None else {"index": cache["index"] + t}
        for i in range(c.num_decoder_layers):
            key = f"layers_{i}"
            lp, lv, name = p[key], pa.child(dv, key), f"decoder/{key}"
            lc = None if cache is None else cache[key]
            sa = lambda h: self._attention(lp["self_attention"], pa.child(lv, "self_attention"), ctx, h, h, bias,
                                           self_mask, name + "/self_attention", None if lc is None else lc["self"],
                                           index)
            x, self_c = self._sublayer(x, lp, lv, ctx, "pre_self_attention_layer_norm", sa, "attention_adapter",
                                       name + "/sa")
            ca = lambda h: self._attention(lp["encoder_decoder_attention"], pa.child(lv, "encoder_decoder_attention"),
                                           ctx, h, encoded, None, cross_mask, name + "/cross",
                                           None if lc is None else lc["cross"])
            x, cross_c = self._sublayer(x, lp, lv, ctx, "pre_cross_attention_layer_norm", ca, "cross_adapter",
                                        name + "/ca")
            mlp = lambda h: (L.gated_mlp(h, lp["mlp"], pa.child(lv, "mlp"), ctx, c.activation, c.dropout_rate,
                                         name + "/mlp"), None)
            x, _ = self._sublayer(x, lp, lv, ctx, "pre_mlp_layer_norm", mlp, "mlp_adapter", name + "/mlp_out")
            if cache is not None:
                new_cache[key] = {"self": self_c, "cross": cross_c}
        x = L.rms_norm(x, p["decoder_norm"], pa.child(dv, "decoder_norm"), ctx, c.layer_norm_epsilon)
        return ctx.dropout(x, c.dropout_rate, "decoder/final"), new_cache

    def _logits(self, params, views, ctx, x_BxTxD):
        c = self.config
        if c.tie_word_embeddings:  # T5 v1.0: shared embedding, rescaled
            table = pa.param(params["token_embedder"], "embedding", pa.child(views, "token_embedder"), ctx.dtype)
            return (x_BxTxD * c.d_model**-0.5 @ table.T).astype(jnp.float32)
        dv = pa.child(pa.child(views, "decoder"), "logits_dense")
        return pa.linear(x_BxTxD, params["decoder"]["logits_dense"], dv, ctx, "decoder/logits").astype(jnp.float32)

    # ----------------------------------------------------------------- public API
    def logits(self, params, batch: dict, peft=None, *, dropout_rng=None) -> jax.Array:
        """Teacher-forced float32 logits [B, T, V] for a t5x-style batch."""
        views, ctx = pa.as_views(peft), self._ctx(dropout_rng)
        encoded, mask = self._encode(params, views, ctx, batch["encoder_input_tokens"])
        return self._decode(params, views, ctx, batch["decoder_input_tokens"], encoded, mask)[0]

    def hidden(self, params, batch: dict, peft=None, *, dropout_rng=None) -> jax.Array:
        """Teacher-forced final decoder states [B, T, D]: what the output head of `logits` reads."""
        views, ctx = pa.as_views(peft), self._ctx(dropout_rng)
        encoded, mask = self._encode(params, views, ctx, batch["encoder_input_tokens"])
        return self._decode_hidden(params, views, ctx, batch["decoder_input_tokens"], encoded, mask)[0]

    def frozen_head(self, params, peft=None) -> L.Head | None:
        """The output projection as a plain kernel, or None when a PEFT module changes it."""
        c, views = self.config, pa.as_views(peft)
        if c.tie_word_embeddings:
            if pa.child(views, "token_embedder"):
                return None
            return L.Head(params["token_embedder"]["embedding"].astype(self.dtype), True, c.d_model**-0.5)
        if pa.child(pa.child(views, "decoder"), "logits_dense"):
            return None
        return L.Head(params["decoder"]["logits_dense"]["kernel"].astype(self.dtype), False, None)

    def decode_init(self, params, batch: dict, max_decode_len: int, peft=None) -> dict:
        """Decoding state: encoder output, its mask, per-layer KV caches and cross K/V (computed once)."""
        c = self.config
        views, ctx = pa.as_views(peft), self._ctx(None)
        encoded, mask = self._encode(params, views, ctx, batch["encoder_input_tokens"])
        b = encoded.shape[0]
        state: dict[str, Any] = {"index": jnp.zeros((b,), jnp.int32), "encoder_mask": mask}
        dv = pa.child(views, "decoder")
        for i in range(c.num_decoder_layers):
            ap, av = params["decoder"][f"layers_{i}"]["encoder_decoder_attention"], pa.child(
                pa.child(dv, f"layers_{i}"), "encoder_decoder_attention")
            k = L.split_heads(pa.linear(encoded, ap["key"], pa.child(av, "key"), ctx, "k"), c.num_heads)
            v = L.split_heads(pa.linear(encoded, ap["value"], pa.child(av, "value"), ctx, "v"), c.num_heads)
            zeros = jnp.zeros((b, max_decode_len, c.num_heads, c.d_kv), ctx.dtype)
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
        views, ctx = pa.as_views(peft), self._ctx(None)
        dummy_encoded = None  # cross K/V come from the state
        logits, new = self._decode(params, views, ctx, tokens_BxT, dummy_encoded, state["encoder_mask"], state)
        new["encoder_mask"] = state["encoder_mask"]
        return logits, new


def _attend_shared_kv(q_NxTxHxK, k_BxSxHxK, v_BxSxHxK, mask_BxTxS):
    """Attention of N = B*r query rows (r beams per example, beam-major within a row) to K/V held once
    per example: the r beams become r*T query positions of their example."""
    n, t, h, kd = q_NxTxHxK.shape
    b = k_BxSxHxK.shape[0]
    r = n // b
    q = q_NxTxHxK.reshape(b, r * t, h, kd)
    out = L.attend(q, k_BxSxHxK, v_BxSxHxK, None, jnp.tile(mask_BxTxS, (1, r, 1)), scale=1.0)
    return out.reshape(n, t, h * kd)
