"""PaLM-style decoder-only language model as pure functions of explicit parameter trees.

Defaults follow PaLM: parallel attention + MLP block, SwiGLU, multi-query
attention, RoPE, no biases, shared input/output embedding, optional z-loss (in
the training losses). Knobs (block style, activation, KV heads, norm offset,
embedding scale, tying) express Llama and Gemma too, so their Hugging Face
checkpoints load (`peft_jax.models.hf`).
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
class DecoderModel(SpecModel):
    """The decoder-only model. Hashable, so it can be closed over by jitted functions."""

    config: DecoderConfig
    family: str = dataclasses.field(default="decoder_only", init=False)

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

    # ------------------------------------------------------------------ layers
    def _norm(self, x, p, views, key, ctx):
        c = self.config
        return L.rms_norm(x, p[key], pa.child(views, key), ctx, c.norm_eps, c.norm_plus_one)

    def _attention(self, p, views, ctx, x_BxTxD, pos_BxT, mask_BxTxS, name, cache, index):
        c = self.config
        lin = lambda key, h: pa.linear(h, p[key], pa.child(views, key), ctx, f"{name}/{key}")
        q = L.rope(L.split_heads(lin("query", x_BxTxD), c.num_heads), pos_BxT, c.rope_theta)
        k = L.rope(L.split_heads(lin("key", x_BxTxD), c.num_kv_heads), pos_BxT, c.rope_theta)
        v = L.split_heads(lin("value", x_BxTxD), c.num_kv_heads)
        new_cache = None
        if cache is not None:
            k, v = L.update_cache(cache["k"], k, index), L.update_cache(cache["v"], v, index)
            new_cache = {"k": k, "v": v}
        scale = c.query_scale if c.query_scale is not None else c.head_dim**-0.5
        out = L.attend(q, k, v, None, mask_BxTxS, scale)
        return lin("out", out), new_cache

    def _layer(self, x, p, views, ctx, pos, mask, name, cache, index):
        c = self.config
        mlp = lambda h: L.gated_mlp(h, p["mlp"], pa.child(views, "mlp"), ctx, c.activation, c.dropout_rate,
                                    name + "/mlp")
        attn = lambda h: self._attention(p["attention"], pa.child(views, "attention"), ctx, h, pos, mask,
                                         name + "/attention", cache, index)
        drop = lambda y, key: ctx.dropout(y, c.dropout_rate, f"{name}/{key}")
        if c.block == "parallel":  # PaLM: attention and MLP read the same normalised input
            h = self._norm(x, p, views, "pre_norm", ctx)
            a, new_cache = attn(h)
            a = pa.adapters(drop(a, "attn"), views, "attention_adapter", ctx)
            m = pa.adapters(drop(mlp(h), "mlp"), views, "mlp_adapter", ctx)
            return x + a + m, new_cache
        a, new_cache = attn(self._norm(x, p, views, "pre_attention_norm", ctx))
        x = x + pa.adapters(drop(a, "attn"), views, "attention_adapter", ctx)
        m = mlp(self._norm(x, p, views, "pre_mlp_norm", ctx))
        return x + pa.adapters(drop(m, "mlp"), views, "mlp_adapter", ctx), new_cache

    def _embed(self, params, views, ctx, tokens_BxT):
        c = self.config
        table = pa.param(params["token_embedder"], "embedding", pa.child(views, "token_embedder"), ctx.dtype)
        x = table[tokens_BxT]
        if c.embed_scale:
            x = x * jnp.asarray(c.d_model**0.5, ctx.dtype)
        return x

    def _forward(self, params, views, ctx, x_BxTxD, pos_BxT, mask_BxTxS, cache=None, index=0):
        x, new_cache = self._forward_hidden(params, views, ctx, x_BxTxD, pos_BxT, mask_BxTxS, cache, index)
        return self._logits(params, views, ctx, x), new_cache

    def _forward_hidden(self, params, views, ctx, x_BxTxD, pos_BxT, mask_BxTxS, cache=None, index=0):
        """Final states [B, T, D] (after the final norm) and the updated cache."""
        c = self.config
        x = ctx.dropout(x_BxTxD, c.dropout_rate, "embed")
        new_cache = None if cache is None else {}
        for i in range(c.num_layers):
            key = f"layers_{i}"
            x, lc = self._layer(x, params[key], pa.child(views, key), ctx, pos_BxT, mask_BxTxS, key,
                                None if cache is None else cache[key], index)
            if cache is not None:
                new_cache[key] = lc
        return self._norm(x, params, views, "final_norm", ctx), new_cache

    def _logits(self, params, views, ctx, x_BxTxD):
        if self.config.tie_word_embeddings:
            table = pa.param(params["token_embedder"], "embedding", pa.child(views, "token_embedder"), ctx.dtype)
            return (x_BxTxD @ table.T).astype(jnp.float32)
        lv = pa.child(views, "logits_dense")
        return pa.linear(x_BxTxD, params["logits_dense"], lv, ctx, "logits").astype(jnp.float32)

    # ---------------------------------------------------------------- public API
    def logits(self, params, batch: dict, peft=None, *, dropout_rng=None) -> jax.Array:
        """Float32 logits [B, T, V] for `decoder_input_tokens` (prefix-LM if `decoder_causal_attention`)."""
        views = pa.as_views(peft)
        return self._logits(params, views, pa.Ctx(self.dtype, dropout_rng),
                            self.hidden(params, batch, peft, dropout_rng=dropout_rng))

    def hidden(self, params, batch: dict, peft=None, *, dropout_rng=None) -> jax.Array:
        """Final states [B, T, D] of the input tokens (soft-prompt positions dropped): what `logits` projects."""
        views, ctx = pa.as_views(peft), pa.Ctx(self.dtype, dropout_rng)
        tokens = batch["decoder_input_tokens"]
        b, t = tokens.shape
        x = self._embed(params, views, ctx, tokens)
        prefix = batch.get("decoder_causal_attention")
        prefix = jnp.zeros((b, t), bool) if prefix is None else prefix.astype(bool)
        prompt = pa.prompts(views, b, ctx.dtype)
        p_len = 0
        if prompt is not None:  # soft prompt prepended, read causally (as the KV-cached decoder writes it)
            p_len = prompt.shape[1]
            x = jnp.concatenate([prompt, x], axis=1)
            prefix = jnp.concatenate([jnp.zeros((b, p_len), bool), prefix], axis=1)
        n = t + p_len
        pos = jnp.broadcast_to(jnp.arange(n), (b, n))
        causal = jnp.arange(n)[None, :, None] >= jnp.arange(n)[None, None, :]
        mask = causal | (prefix[:, :, None] & prefix[:, None, :])
        return self._forward_hidden(params, views, ctx, x, pos, mask)[0][:, p_len:]

    def frozen_head(self, params, peft=None) -> L.Head | None:
        """The output projection as a plain kernel, or None when a PEFT module changes it."""
        views = pa.as_views(peft)
        if self.config.tie_word_embeddings:
            if pa.child(views, "token_embedder"):
                return None
            return L.Head(params["token_embedder"]["embedding"].astype(self.dtype), True, None)
        if pa.child(views, "logits_dense"):
            return None
        return L.Head(params["logits_dense"]["kernel"].astype(self.dtype), False, None)

    def decode_init(self, params, batch: dict | None, max_decode_len: int, peft=None) -> dict:
        """Empty KV caches (soft prompts, if any, already written): positions start after them."""
        c = self.config
        views, ctx = pa.as_views(peft), pa.Ctx(self.dtype, None)
        b = _batch_size(batch)
        prompt = pa.prompts(views, b, ctx.dtype)
        p_len = 0 if prompt is None else prompt.shape[1]
        zeros = jnp.zeros((b, max_decode_len + p_len, c.num_kv_heads, c.head_dim), ctx.dtype)
        state: dict[str, Any] = {f"layers_{i}": {"k": zeros, "v": zeros} for i in range(c.num_layers)}
        state["index"] = jnp.zeros((b,), jnp.int32)
        if prompt is not None:
            _, state = self._step(params, views, ctx, state, prompt)
        return state

    def decode_step(self, params, state: dict, tokens_BxT, peft=None):
        """Logits [B, T, V] for T new tokens at the state's position, and the advanced state."""
        views, ctx = pa.as_views(peft), pa.Ctx(self.dtype, None)
        return self._step(params, views, ctx, state, self._embed(params, views, ctx, tokens_BxT))

    def _step(self, params, views, ctx, state, x_BxTxD):
        b, t = x_BxTxD.shape[:2]
        index = state["index"][0]
        q_pos = index + jnp.arange(t)
        s = state["layers_0"]["k"].shape[1]
        mask = jnp.broadcast_to(jnp.arange(s)[None, None, :] <= q_pos[None, :, None], (b, t, s))
        pos = jnp.broadcast_to(q_pos, (b, t))
        logits, cache = self._forward(params, views, ctx, x_BxTxD, pos, mask, state, index)
        cache["index"] = state["index"] + t
        return logits, cache


def _batch_size(batch) -> int:
    for key in ("decoder_input_tokens", "decoder_target_tokens", "encoder_input_tokens"):
        if batch and key in batch:
            return batch[key].shape[0]
    if batch and "batch_size" in batch:
        return int(batch["batch_size"])
    raise ValueError("decode_init needs a batch with decoder_input_tokens (or {'batch_size': B})")
