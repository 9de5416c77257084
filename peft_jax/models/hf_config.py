"""Hugging Face `config.json` -> our model configs, read strictly.

Every field of a config is, for its architecture, either read (the computation it asks for is
implemented), inert (it cannot change the logits: metadata, generation settings, training-only
switches, values other fields determine), or accepted only with its neutral value. Any other field is
refused by name: a loader that does not know what a field does cannot promise the numbers.
Missing fields take the defaults of the `transformers` config class, as `from_pretrained` would.
"""

from __future__ import annotations

import math
from typing import Any

from peft_jax.models.decoder import DecoderConfig
from peft_jax.models.errors import CheckpointError
from peft_jax.models.layers import ACTIVATIONS
from peft_jax.models.t5 import T5Config

# model_type -> the model class name `transformers` builds for it.
ARCHITECTURES = {
    "mt5": "MT5ForConditionalGeneration", "t5": "T5ForConditionalGeneration",
    "llama": "LlamaForCausalLM", "gemma": "GemmaForCausalLM", "gemma2": "Gemma2ForCausalLM",
}
T5_TYPES = ("mt5", "t5")

# Fields that never change the logits of an eval-mode forward pass.
INERT = frozenset({
    "architectures", "model_type", "transformers_version", "dtype", "torch_dtype", "use_cache", "_name_or_path",
    "initializer_range", "initializer_factor", "bos_token_id", "pad_token_id", "eos_token_id", "sep_token_id",
    "decoder_start_token_id", "max_position_embeddings", "tokenizer_class", "output_past",
    "task_specific_params", "id2label", "label2id", "problem_type", "return_dict", "output_attentions",
    "output_hidden_states", "gradient_checkpointing", "cache_implementation", "classifier_dropout",
    "attention_dropout", "dropout_rate", "pretraining_tp", "n_positions", "num_beams", "max_length", "min_length",
    "no_repeat_ngram_size", "early_stopping", "length_penalty", "prefix", "chunk_size_feed_forward",
    "tie_encoder_decoder", "is_decoder", "add_cross_attention", "use_return_dict",
})
# Hugging Face activation names -> ours (`layers.ACTIVATIONS`).
HF_ACTIVATIONS = {"gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "gelu": "gelu_exact", "silu": "silu",
                  "swish": "silu", "relu": "relu"}
assert set(HF_ACTIVATIONS.values()) <= set(ACTIVATIONS)

ROPE_FIELDS = {"default": (), "linear": ("factor",),
               "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")}


class ConfigReader:
    """One config.json: typed reads that record which fields were used, and the final strictness check."""

    def __init__(self, cfg: dict, path: str):
        self.cfg, self.path, self.used = cfg, path, set()

    def error(self, msg: str) -> CheckpointError:
        return CheckpointError(f"{self.path}: {msg}")

    def get(self, key: str, default: Any = None) -> Any:
        self.used.add(key)
        return self.cfg.get(key, default)

    def need(self, key: str) -> Any:
        if self.cfg.get(key) is None:
            raise self.error(f"config.json lacks required field {key!r}")
        return self.get(key)

    def positive_int(self, key: str, default: Any = None) -> int:
        value = self.need(key) if default is None and key not in self.cfg else self.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise self.error(f"config.json field {key!r} must be a positive integer, got {value!r}")
        return value

    def number(self, key: str, default: Any, *, positive: bool = True, optional: bool = False) -> float | None:
        value = self.get(key, default)
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or (positive and value <= 0):
            raise self.error(f"config.json field {key!r} must be a finite {'positive ' if positive else ''}number, "
                             f"got {value!r}")
        return float(value)

    def flag(self, key: str, default: bool) -> bool:
        value = self.get(key, default)
        if not isinstance(value, bool):
            raise self.error(f"config.json field {key!r} must be true or false, got {value!r}")
        return value

    def neutral(self, key: str, *values: Any, why: str) -> None:
        """Accepts `key` only absent or with one of `values` (what we implement)."""
        if key in self.cfg and self.get(key) not in values:
            raise self.error(f"config.json field {key!r}={self.cfg[key]!r} is not supported ({why})")

    def finish(self, model_type: str) -> None:
        unknown = sorted(set(self.cfg) - self.used - INERT)
        if unknown:
            raise self.error(f"config.json fields {unknown} are not understood for model_type {model_type!r}; "
                             "they may change the computation, so the checkpoint is refused")


def model_type_of(r: ConfigReader) -> str:
    """The model_type, checked against `architectures`."""
    archs = r.get("architectures") or []
    model_type = r.get("model_type")
    if model_type is None and archs:
        model_type = next((t for t, a in ARCHITECTURES.items() if a == archs[0]), None)
    if model_type not in ARCHITECTURES:
        name = archs[0] if archs else model_type
        raise r.error(f"unsupported architecture {name!r}; supported: {', '.join(ARCHITECTURES.values())}")
    if archs and list(archs) != [ARCHITECTURES[model_type]]:
        raise r.error(f"unsupported architecture {archs[0] if len(archs) == 1 else archs!r} for model_type "
                      f"{model_type!r} (expected {ARCHITECTURES[model_type]})")
    return model_type


def activation(r: ConfigReader, key: str, value: str) -> str:
    if value not in HF_ACTIVATIONS:
        raise r.error(f"config.json field {key!r}={value!r}: activation not implemented; "
                      f"known: {sorted(HF_ACTIVATIONS)}")
    return HF_ACTIVATIONS[value]


def t5_config(r: ConfigReader, model_type: str, dtype: str) -> T5Config:
    proj = r.get("feed_forward_proj", "gated-gelu" if model_type == "mt5" else "relu")
    parts = proj.split("-") if isinstance(proj, str) else []
    if not (len(parts) == 1 or (len(parts) == 2 and parts[0] == "gated")):
        raise r.error(f"config.json field 'feed_forward_proj'={proj!r} is not of the form gated-ACT or ACT")
    # The config class derives these two from feed_forward_proj, but values in the file override it.
    gated = r.flag("is_gated_act", len(parts) == 2)
    if not gated:
        raise r.error(f"config.json: a non-gated MLP (feed_forward_proj={proj!r}, is_gated_act=false; T5 v1.0) is "
                      "not supported: only gated ones (T5 v1.1 / mT5)")
    act = activation(r, "dense_act_fn", r.get("dense_act_fn", "gelu_new" if proj == "gated-gelu" else parts[-1]))
    layers = r.positive_int("num_layers", 6 if model_type == "t5" else 8)
    dec_layers = r.get("num_decoder_layers")
    return T5Config(
        vocab_size=r.positive_int("vocab_size"), d_model=r.positive_int("d_model"), d_kv=r.positive_int("d_kv"),
        d_ff=r.positive_int("d_ff"), num_heads=r.positive_int("num_heads"), num_layers=layers,
        num_decoder_layers=layers if dec_layers is None else r.positive_int("num_decoder_layers"),
        relative_attention_num_buckets=r.positive_int("relative_attention_num_buckets", 32),
        relative_attention_max_distance=r.positive_int("relative_attention_max_distance", 128),
        dropout_rate=r.number("dropout_rate", 0.1, positive=False),
        layer_norm_epsilon=r.number("layer_norm_epsilon", 1e-6),
        activation=act, tie_word_embeddings=r.flag("tie_word_embeddings", True), dtype=dtype,
        pad_id=_token(r, "pad_token_id", 0), eos_id=_token(r, "eos_token_id", 1),
        decoder_start_id=_token(r, "decoder_start_token_id", 0))


def _token(r: ConfigReader, key: str, default: int | None) -> int | None:
    value = r.get(key, default)
    if isinstance(value, list):  # several EOS ids: the first stops decoding
        value = value[0] if value else default
    return default if value is None else value


def rope(r: ConfigReader) -> dict:
    """DecoderConfig's rope fields from either layout: `rope_parameters` (transformers 5) or top-level
    `rope_theta` + `rope_scaling` (4.x, whose scaling may name its type under the older key "type")."""
    params, scaling, theta = r.get("rope_parameters"), r.get("rope_scaling"), r.get("rope_theta")
    for key, value in (("rope_parameters", params), ("rope_scaling", scaling)):
        if value is not None and not isinstance(value, dict):
            raise r.error(f"config.json field {key!r} must be an object or null, got {value!r}")
    if params is not None and (scaling is not None or theta is not None):
        merged = {**(scaling or {}), **({} if theta is None else {"rope_theta": theta})}
        if any(params.get(k, v) != v for k, v in merged.items() if k != "type"):
            raise r.error("config.json gives both 'rope_parameters' and 'rope_theta'/'rope_scaling', and they differ")
    key = "rope_parameters" if params is not None else "rope_scaling"
    rp = {"rope_theta": 10000.0 if theta is None else theta, **(scaling or {}), **(params or {})}
    kind = rp.pop("rope_type", None)
    old = rp.pop("type", None)
    if kind is not None and old is not None and kind != old:
        raise r.error(f"config.json {key} gives rope_type={kind!r} and type={old!r}")
    kind = kind or old or "default"
    if kind not in ROPE_FIELDS:
        raise r.error(f"config.json {key} rope_type={kind!r} is not implemented; known: {sorted(ROPE_FIELDS)}")
    theta = rp.pop("rope_theta", 10000.0)
    if isinstance(theta, bool) or not isinstance(theta, (int, float)) or not theta > 0:
        raise r.error(f"config.json rope_theta must be a positive number, got {theta!r}")
    if rp.get("partial_rotary_factor", 1.0) == 1.0:  # every dimension rotates: plain RoPE's layout
        rp.pop("partial_rotary_factor", None)
    needed = ROPE_FIELDS[kind]
    extra = sorted(set(rp) - set(needed))
    if extra:
        raise r.error(f"config.json {key} fields {extra} are not implemented for rope_type {kind!r}")
    missing = [k for k in needed if rp.get(k) is None]
    if missing:
        raise r.error(f"config.json {key} lacks {missing} for rope_type {kind!r}")
    for k in needed:
        v = rp[k]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            raise r.error(f"config.json {key} field {k!r} must be a positive number, got {v!r}")
    if kind == "llama3" and rp["low_freq_factor"] >= rp["high_freq_factor"]:
        raise r.error(f"config.json {key}: llama3 needs low_freq_factor < high_freq_factor")
    out = dict(rope_theta=float(theta), rope_scaling=kind)
    if kind in ("linear", "llama3"):
        out["rope_factor"] = float(rp["factor"])
    if kind == "llama3":
        out.update(rope_low_freq_factor=float(rp["low_freq_factor"]),
                   rope_high_freq_factor=float(rp["high_freq_factor"]),
                   rope_original_max_positions=int(rp["original_max_position_embeddings"]))
    return out


def decoder_config(r: ConfigReader, model_type: str, dtype: str) -> DecoderConfig:
    gemma, gemma2 = model_type in ("gemma", "gemma2"), model_type == "gemma2"
    r.neutral("attention_bias", False, why="attention biases are not implemented")
    r.neutral("mlp_bias", False, why="MLP biases are not implemented")
    r.neutral("use_bidirectional_attention", None, False, why="only causal attention is implemented")
    heads = r.positive_int("num_attention_heads")
    if heads % r.positive_int("num_key_value_heads", heads):
        raise r.error(f"config.json: num_attention_heads={heads} is not a multiple of "
                      f"num_key_value_heads={r.cfg['num_key_value_heads']}")
    d = r.positive_int("hidden_size")
    head_dim = r.get("head_dim")
    head_dim = (256 if gemma else d // heads) if head_dim is None else r.positive_int("head_dim")
    if gemma2:
        act = activation(r, "hidden_activation", r.get("hidden_activation", "gelu_pytorch_tanh"))
        r.used.add("hidden_act")  # Gemma 2 reads hidden_activation only
    elif gemma:  # Gemma's config turns its legacy "gelu" into the tanh approximation
        name = r.get("hidden_act", "gelu_pytorch_tanh")
        act = activation(r, "hidden_act", "gelu_pytorch_tanh" if name == "gelu" else name)
        r.used.add("hidden_activation")  # not read by transformers 5's Gemma
    else:
        act = activation(r, "hidden_act", r.get("hidden_act", "silu"))
    layers = r.positive_int("num_hidden_layers")
    extra = {}
    if gemma2:
        extra = dict(query_scale=r.number("query_pre_attn_scalar", 256) ** -0.5, post_norms=True,
                     attn_softcap=r.number("attn_logit_softcapping", 50.0, optional=True),
                     final_softcap=r.number("final_logit_softcapping", 30.0, optional=True),
                     **_layer_types(r, layers))
    return DecoderConfig(
        vocab_size=r.positive_int("vocab_size"), d_model=d, num_heads=heads, head_dim=head_dim,
        d_ff=r.positive_int("intermediate_size"), num_layers=layers,
        num_kv_heads=r.positive_int("num_key_value_heads", heads), block="sequential", activation=act,
        norm_eps=r.number("rms_norm_eps", 1e-6), norm_plus_one=gemma, embed_scale=gemma,
        tie_word_embeddings=r.flag("tie_word_embeddings", gemma), dtype=dtype, **rope(r), **extra,
        pad_id=_token(r, "pad_token_id", 0) or 0, eos_id=_token(r, "eos_token_id", 1),
        bos_id=_token(r, "bos_token_id", None))


def _layer_types(r: ConfigReader, layers: int) -> dict:
    """Gemma 2's per-layer attention kinds (default: sliding on even layers) and window."""
    types = r.get("layer_types")
    if types is None:
        types = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers)]
    kinds = {"sliding_attention": "sliding", "full_attention": "full"}
    if not isinstance(types, list) or len(types) != layers or any(t not in kinds for t in types):
        raise r.error(f"config.json field 'layer_types' must list 'sliding_attention' or 'full_attention' for "
                      f"each of the num_hidden_layers={layers} layers, got {types!r}")
    window = r.get("sliding_window", 4096)
    if "sliding_attention" in types and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
        raise r.error(f"config.json field 'sliding_window' must be a positive integer, got {window!r}")
    return dict(layer_types=tuple(kinds[t] for t in types),
                sliding_window=window if "sliding_attention" in types else None)


def model_config(cfg: dict, path: str, dtype: str):
    """(model_type, our config) for a config.json dict; refuses any field it cannot honour."""
    r = ConfigReader(cfg, path)
    model_type = model_type_of(r)
    r.neutral("quantization_config", None, why="quantized checkpoints are not supported")
    r.neutral("is_encoder_decoder", model_type in T5_TYPES, why=f"a {model_type} model is "
              f"{'' if model_type in T5_TYPES else 'not '}an encoder-decoder")
    try:
        config = (t5_config if model_type in T5_TYPES else decoder_config)(r, model_type, dtype)
    except ValueError as e:
        if isinstance(e, CheckpointError):
            raise
        raise r.error(f"config.json describes an invalid model: {e}") from None
    r.finish(model_type)
    return model_type, config


# ------------------------------------------------------------------ writing configs
OUR_TO_HF_ACTIVATION = {"gelu": "gelu_pytorch_tanh", "gelu_exact": "gelu", "silu": "silu", "relu": "relu"}


def to_hf(config) -> dict:
    """The config.json that makes transformers 5 build the same computation as our `config`."""
    if isinstance(config, T5Config):
        return _t5_to_hf(config)
    c = config
    if c.block != "sequential" or (c.query_scale is not None and not c.post_norms
                                   and not math.isclose(c.query_scale, c.head_dim**-0.5)):
        raise CheckpointError("only sequential-block decoders with head_dim**-0.5 attention scaling (Llama, Gemma) "
                              "or Gemma 2 have a Hugging Face counterpart")
    if c.norm_plus_one != c.embed_scale or (c.post_norms and not c.norm_plus_one):
        raise CheckpointError("this decoder mixes Llama and Gemma conventions: no Hugging Face counterpart")
    model_type = "gemma2" if c.post_norms else "gemma" if c.norm_plus_one else "llama"
    if model_type != "gemma2" and (c.attn_softcap or c.final_softcap or c.layer_types):
        raise CheckpointError("soft-capping and sliding windows need the Gemma 2 layout (post_norms=True)")
    rope = {"rope_type": c.rope_scaling, "rope_theta": c.rope_theta}
    if c.rope_scaling != "default":
        rope["factor"] = c.rope_factor
    if c.rope_scaling == "llama3":
        rope.update(low_freq_factor=c.rope_low_freq_factor, high_freq_factor=c.rope_high_freq_factor,
                    original_max_position_embeddings=c.rope_original_max_positions)
    out = dict(architectures=[ARCHITECTURES[model_type]], model_type=model_type, vocab_size=c.vocab_size,
               hidden_size=c.d_model, intermediate_size=c.d_ff, num_hidden_layers=c.num_layers,
               num_attention_heads=c.num_heads, num_key_value_heads=c.num_kv_heads, head_dim=c.head_dim,
               rms_norm_eps=c.norm_eps, tie_word_embeddings=c.tie_word_embeddings, rope_parameters=rope,
               attention_bias=False, pad_token_id=c.pad_id, eos_token_id=c.eos_id, bos_token_id=c.bos_id,
               dtype="float32")
    act = OUR_TO_HF_ACTIVATION[c.activation]
    if model_type == "gemma2":
        out.update(hidden_activation=act, query_pre_attn_scalar=(c.query_scale or c.head_dim**-0.5) ** -2,
                   attn_logit_softcapping=c.attn_softcap, final_logit_softcapping=c.final_softcap,
                   sliding_window=c.sliding_window,
                   layer_types=[f"{t}_attention" for t in (c.layer_types or ("full",) * c.num_layers)])
    else:
        out.update(hidden_act=act, mlp_bias=False)
    return out


def _t5_to_hf(c: T5Config) -> dict:
    if c.activation == "gelu_exact":
        raise CheckpointError("a T5 with exact (erf) GELU has no Hugging Face feed_forward_proj")
    # A tied head is T5's (rescaled by d_model**-0.5): T5Config; an untied one is mT5's.
    model_type = "t5" if c.tie_word_embeddings else "mt5"
    return dict(architectures=[ARCHITECTURES[model_type]], model_type=model_type, vocab_size=c.vocab_size,
                d_model=c.d_model, d_kv=c.d_kv, d_ff=c.d_ff, num_heads=c.num_heads, num_layers=c.num_layers,
                num_decoder_layers=c.num_decoder_layers,
                relative_attention_num_buckets=c.relative_attention_num_buckets,
                relative_attention_max_distance=c.relative_attention_max_distance, dropout_rate=c.dropout_rate,
                layer_norm_epsilon=c.layer_norm_epsilon, feed_forward_proj=f"gated-{c.activation}",
                tie_word_embeddings=c.tie_word_embeddings, is_encoder_decoder=True, pad_token_id=c.pad_id,
                eos_token_id=c.eos_id, decoder_start_token_id=c.decoder_start_id, dtype="float32")
