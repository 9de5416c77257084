"""Named model sizes: the real mT5 dimensions, PaLM-style sizes, and tiny ones for tests."""

from __future__ import annotations

import dataclasses

from peft_jax.models.decoder import DecoderConfig
from peft_jax.models.registry import model_for_config
from peft_jax.models.t5 import T5Config

_MT5_VOCAB = 250_112


def _mt5(d_model, d_ff, heads, layers):
    return T5Config(vocab_size=_MT5_VOCAB, d_model=d_model, d_kv=64, d_ff=d_ff, num_heads=heads,
                    num_layers=layers, num_decoder_layers=layers)


PRESETS = {
    # mT5 (Xue et al. 2021), T5 v1.1 architecture, untied LM head.
    "mt5_small": _mt5(512, 1024, 6, 8),
    "mt5_base": _mt5(768, 2048, 12, 12),
    "mt5_large": _mt5(1024, 2816, 16, 24),
    "mt5_xl": _mt5(2048, 5120, 32, 24),
    "mt5_xxl": _mt5(4096, 10240, 64, 24),
    # Tiny encoder-decoder for tests and the embedded demo (vocabulary set by the tokenizer).
    "mt5_tiny": T5Config(vocab_size=512, d_model=64, d_kv=16, d_ff=128, num_heads=4, num_layers=2,
                         num_decoder_layers=2, relative_attention_num_buckets=16,
                         relative_attention_max_distance=64, dropout_rate=0.0),
    # PaLM-style decoder-only (parallel block, SwiGLU, multi-query, RoPE, tied embeddings).
    "palm_small": DecoderConfig(vocab_size=_MT5_VOCAB, d_model=512, num_heads=8, head_dim=64, d_ff=2048,
                                num_layers=16, num_kv_heads=1),
    "palm_8b": DecoderConfig(vocab_size=256_000, d_model=4096, num_heads=16, head_dim=256, d_ff=16384,
                             num_layers=32, num_kv_heads=1),
    "palm_tiny": DecoderConfig(vocab_size=512, d_model=64, num_heads=4, head_dim=16, d_ff=128, num_layers=2,
                               num_kv_heads=1),
}


def get_model(name: str, **overrides):
    """Model for preset `name` with config fields overridden, e.g. get_model('mt5_tiny', vocab_size=1000)."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}")
    config = PRESETS[name]
    fields = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown {type(config).__name__} fields {unknown}; known: {sorted(fields)}")
    config = dataclasses.replace(config, **overrides)
    return model_for_config(config)
