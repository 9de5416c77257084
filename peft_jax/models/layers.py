"""Building blocks shared by the encoder-decoder and decoder-only models.

Pure functions of arrays and of a `peft.scope.Scope` (the base parameters and active
PEFT modules at the layer's path). Tensor names carry shapes: B batch, T query length,
S key length, D model width, H heads, K head dim. Every parameter is read through the
scope, so PEFT modules reach every projection, norm scale and position table.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from peft_jax.peft.scope import Scope

NEG_INF = -1e10


class Head(NamedTuple):
    """A frozen output projection: logits = (x * scale) @ kernel, or @ kernel.T when `transposed`
    (a tied [V, D] embedding table). Models return one from `frozen_head` when no PEFT module changes
    the projection, so a loss can stream it over the vocabulary (`train.losses.head_cross_entropy`)."""

    kernel: jax.Array
    transposed: bool
    scale: float | None


def rms_norm(x_BxTxD, scope: Scope, eps: float, plus_one: bool = False):
    """RMSNorm without bias or mean subtraction, computed in float32 (T5, Llama; Gemma with plus_one)."""
    x = x_BxTxD.astype(jnp.float32)
    x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps)
    scale = scope.param("scale", jnp.float32)
    return (x * (1.0 + scale if plus_one else scale)).astype(scope.dtype)


def split_heads(x_BxTxHK, num_heads: int):
    b, t, hk = x_BxTxHK.shape
    return x_BxTxHK.reshape(b, t, num_heads, hk // num_heads)


def attend(q_BxTxHxK, k_BxSxGxK, v_BxSxGxK, bias_BxHxTxS, mask_BxTxS, scale: float, cap: float | None = None):
    """Dot-product attention with grouped KV heads (G divides H), softmax in float32.

    `bias` ([1 or B, H, T, S]) and `mask` ([B, T, S], True = attend) may be None. Under
    differentiation the backward (`_attend_bwd`) keeps q, k, v and the float32 probabilities per
    layer. Differentiating the forward as written would also keep the unnormalised exponentials, the
    broadcast normaliser and a transposed copy of the probabilities: three more [B, H, T, S] buffers
    per layer. (`jax.checkpoint` of the scores does not help on CPU: XLA schedules the recomputation
    early, so the recomputed buffers are alive at the same time as before.)
    `cap` soft-caps the scaled scores before bias and mask (Gemma 2); that path is differentiated by
    JAX as written, since the saved probabilities alone do not give the derivative of the tanh.
    """
    if cap is not None:
        return _attend_fwd(q_BxTxHxK, k_BxSxGxK, v_BxSxGxK, bias_BxHxTxS, mask_BxTxS, scale, cap)[0]
    return _attend(q_BxTxHxK, k_BxSxGxK, v_BxSxGxK, bias_BxHxTxS, mask_BxTxS, scale)


def _probs(q_BxTxGxRxK, k_BxSxGxK, bias_BxHxTxS, mask_BxTxS, scale, cap=None):
    b, t, g, r, _ = q_BxTxGxRxK.shape
    logits = softcap(jnp.einsum("btgrk,bsgk->bgrts", q_BxTxGxRxK, k_BxSxGxK).astype(jnp.float32) * scale, cap)
    logits = logits.reshape(b, g * r, t, -1)
    if bias_BxHxTxS is not None:
        logits = logits + bias_BxHxTxS.astype(jnp.float32)
    if mask_BxTxS is not None:
        logits = jnp.where(mask_BxTxS[:, None], logits, NEG_INF)
    return jax.nn.softmax(logits, axis=-1).reshape(b, g, r, t, -1)  # [B, G, R, T, S] float32


def _grouped(q_BxTxHxK, g: int):
    b, t, h, kd = q_BxTxHxK.shape
    return q_BxTxHxK.reshape(b, t, g, h // g, kd)


def _attend_fwd(q, k, v, bias, mask, scale, cap=None):
    probs = _probs(_grouped(q, k.shape[2]), k, bias, mask, scale, cap)
    out = jnp.einsum("bgrts,bsgk->btgrk", probs.astype(v.dtype), v)
    b, t, h, kd = q.shape
    return out.reshape(b, t, h * kd), (q, k, v, bias, probs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _attend(q, k, v, bias, mask, scale):
    return _attend_fwd(q, k, v, bias, mask, scale)[0]


def _attend_bwd(scale, res, g_out):
    q, k, v, bias, probs = res
    b, t, h, kd = q.shape
    qg = _grouped(q, k.shape[2])
    go = g_out.reshape(qg.shape)
    dv = jnp.einsum("bgrts,btgrk->bsgk", probs.astype(v.dtype), go)
    dp = jnp.einsum("btgrk,bsgk->bgrts", go, v).astype(jnp.float32)
    dlogits = probs * (dp - jnp.sum(probs * dp, axis=-1, keepdims=True))  # softmax VJP; masked entries are 0
    dl = (dlogits * scale).astype(q.dtype)
    dq = jnp.einsum("bgrts,bsgk->btgrk", dl, k).reshape(q.shape)
    dk = jnp.einsum("bgrts,btgrk->bsgk", dl, qg)
    dbias = None
    if bias is not None:
        dbias = dlogits.reshape(b, h, t, -1)
        if bias.shape[0] == 1:
            dbias = jnp.sum(dbias, axis=0, keepdims=True)
        dbias = dbias.astype(bias.dtype)
    return dq, dk.astype(k.dtype), dv.astype(v.dtype), dbias, None


_attend.defvjp(_attend_fwd, _attend_bwd)


def relative_position_bucket(relative_position, bidirectional: bool, num_buckets: int, max_distance: int):
    """T5's log-spaced relative-position buckets (memory position minus query position)."""
    ret = 0
    n = -relative_position
    if bidirectional:
        num_buckets //= 2
        ret = (n < 0).astype(jnp.int32) * num_buckets
        n = jnp.abs(n)
    else:
        n = jnp.maximum(n, 0)
    max_exact = num_buckets // 2
    is_small = n < max_exact
    safe_n = jnp.maximum(n, 1).astype(jnp.float32)
    val_if_large = max_exact + (
        jnp.log(safe_n / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact)
    ).astype(jnp.int32)
    val_if_large = jnp.minimum(val_if_large, num_buckets - 1)
    return ret + jnp.where(is_small, n, val_if_large)


def relative_bias(scope: Scope, q_pos_T, k_pos_S, bidirectional, num_buckets, max_distance):
    """[1, H, T, S] position bias from the shared relative-position embedding."""
    buckets_TxS = relative_position_bucket(k_pos_S[None, :] - q_pos_T[:, None], bidirectional, num_buckets, max_distance)
    table_NxH = scope.param("rel_embedding", jnp.float32)
    return jnp.transpose(table_NxH[buckets_TxS], (2, 0, 1))[None]


ROPE_SCALINGS = ("default", "linear", "llama3")


def rope_frequencies(head_dim: int, theta: float, scaling: str = "default", factor: float = 1.0,
                     low_freq_factor: float = 1.0, high_freq_factor: float = 4.0,
                     original_max_positions: int = 8192) -> jax.Array:
    """Inverse rotary frequencies [head_dim / 2] in float32, with Hugging Face's rope scalings.

    `linear` divides every frequency by `factor` (positions interpolated); `llama3` divides the low
    frequencies (wavelength above `original_max_positions / low_freq_factor`) by `factor`, keeps the
    high ones and interpolates smoothly between (Llama 3.1).
    """
    inv = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    if scaling == "default":
        return inv
    if scaling == "linear":
        return inv / factor
    if scaling != "llama3":
        raise ValueError(f"rope scaling {scaling!r} is not implemented; known: {', '.join(ROPE_SCALINGS)}")
    low_wavelen = original_max_positions / low_freq_factor
    high_wavelen = original_max_positions / high_freq_factor
    wavelen = 2 * math.pi / inv
    scaled = jnp.where(wavelen > low_wavelen, inv / factor, inv)
    smooth = (original_max_positions / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return jnp.where(medium, smoothed, scaled)


def rope(x_BxTxHxK, positions_BxT, inv_freq_K2):
    """Rotary embedding, half-split convention (first half pairs with second half); `inv_freq_K2` from
    `rope_frequencies`."""
    angles_BxTxK2 = positions_BxT[..., None].astype(jnp.float32) * inv_freq_K2
    sin = jnp.sin(angles_BxTxK2)[:, :, None, :]
    cos = jnp.cos(angles_BxTxK2)[:, :, None, :]
    x1, x2 = jnp.split(x_BxTxHxK.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_BxTxHxK.dtype)


# Activations of the gated MLP, by the names configs use: `gelu` is the tanh approximation (T5's
# gelu_new, Gemma's gelu_pytorch_tanh), `gelu_exact` the erf form, `silu` SwiGLU's.
ACTIVATIONS = {
    "gelu": lambda h: jax.nn.gelu(h, approximate=True),
    "gelu_exact": lambda h: jax.nn.gelu(h, approximate=False),
    "silu": jax.nn.silu,
    "relu": jax.nn.relu,
}


def softcap(x, cap: float | None):
    """cap * tanh(x / cap) (Gemma 2's soft-capping of attention and output logits); identity for None."""
    return x if cap is None else jnp.tanh(x / cap) * cap


def gated_mlp(x_BxTxD, scope: Scope, activation: str, dropout: float):
    """act(x W0) * (x W1) then Wo; (IA)^3 on the hidden reaches Wo's input."""
    act = ACTIVATIONS[activation]
    h0 = scope.child("wi_0").linear(x_BxTxD)
    h1 = scope.child("wi_1").linear(x_BxTxD)
    h = scope.dropout(act(h0) * h1, dropout, "hidden")
    return scope.child("wo").linear(h)


def update_cache(cache_BxLxGxK, new_BxTxGxK, index):
    """Writes T new positions at `index` of a preallocated KV cache."""
    return jax.lax.dynamic_update_slice(cache_BxLxGxK, new_BxTxGxK.astype(cache_BxLxGxK.dtype), (0, index, 0, 0))
