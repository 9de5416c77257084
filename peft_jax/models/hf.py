"""Loading Hugging Face checkpoints (config.json + safetensors) into our models.

`load_pretrained(path)` reads `config.json`, builds the matching model config,
then reads each tensor lazily from memory-mapped safetensors (single file or
sharded with `model.safetensors.index.json`), transposes Linear weights to our
`[in, out]` kernels, casts, and places it — into a given sharding if one is
passed, reading only each device's slice. The whole model is never held twice.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from peft_jax.models import native
from peft_jax.models.decoder import DecoderConfig, DecoderModel
from peft_jax.models.errors import CheckpointError
from peft_jax.models.hf_names import TRANSPOSE
from peft_jax.models.safetensors_io import SafetensorsError, SafetensorsFile
from peft_jax.models.spec import flatten, unflatten
from peft_jax.models.t5 import T5Config, T5Model

T5_ARCHS = ("MT5ForConditionalGeneration", "T5ForConditionalGeneration")
DECODER_ARCHS = ("LlamaForCausalLM", "GemmaForCausalLM")


# ------------------------------------------------------------------------ configs
def read_config(path: str) -> dict:
    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: checkpoint directory does not exist")
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        raise CheckpointError(f"{cfg_path}: missing config.json (expected a Hugging Face checkpoint directory)")
    try:
        with open(cfg_path, encoding="utf-8") as f:
            cfg = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{cfg_path}: corrupt config.json ({e})") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{cfg_path}: config.json must hold a JSON object")
    return cfg


def _architecture(cfg: dict, cfg_path: str) -> str:
    archs = cfg.get("architectures") or []
    arch = archs[0] if archs else {"mt5": "MT5ForConditionalGeneration", "t5": "T5ForConditionalGeneration",
                                   "llama": "LlamaForCausalLM", "gemma": "GemmaForCausalLM"}.get(cfg.get("model_type"))
    if arch not in T5_ARCHS + DECODER_ARCHS:
        raise CheckpointError(f"{cfg_path}: unsupported architecture {arch or cfg.get('model_type')!r}; "
                              f"supported: {', '.join(T5_ARCHS + DECODER_ARCHS)}")
    return arch


def _need(cfg: dict, key: str, cfg_path: str):
    if key not in cfg:
        raise CheckpointError(f"{cfg_path}: config.json lacks required field {key!r}")
    return cfg[key]


def t5_config(cfg: dict, cfg_path: str, dtype: str) -> T5Config:
    proj = cfg.get("feed_forward_proj", "relu")
    if proj not in ("gated-gelu", "gated-silu"):
        raise CheckpointError(f"{cfg_path}: feed_forward_proj={proj!r} is not supported (T5 v1.1 / mT5 use gated-gelu)")
    n = lambda k: _need(cfg, k, cfg_path)
    return T5Config(
        vocab_size=n("vocab_size"), d_model=n("d_model"), d_kv=n("d_kv"), d_ff=n("d_ff"), num_heads=n("num_heads"),
        num_layers=n("num_layers"), num_decoder_layers=cfg.get("num_decoder_layers") or n("num_layers"),
        relative_attention_num_buckets=cfg.get("relative_attention_num_buckets", 32),
        relative_attention_max_distance=cfg.get("relative_attention_max_distance", 128),
        dropout_rate=cfg.get("dropout_rate", 0.1), layer_norm_epsilon=cfg.get("layer_norm_epsilon", 1e-6),
        activation="gelu" if proj == "gated-gelu" else "silu",
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)), dtype=dtype,
        pad_id=cfg.get("pad_token_id", 0) or 0, eos_id=cfg.get("eos_token_id", 1) or 1,
        decoder_start_id=cfg.get("decoder_start_token_id", 0) or 0)


def decoder_config(cfg: dict, arch: str, cfg_path: str, dtype: str) -> DecoderConfig:
    n = lambda k: _need(cfg, k, cfg_path)
    if cfg.get("attention_bias") or cfg.get("mlp_bias"):
        raise CheckpointError(f"{cfg_path}: attention/MLP biases are not supported")
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    if rope.get("rope_type", "default") not in ("default", None):
        raise CheckpointError(f"{cfg_path}: rope type {rope.get('rope_type')!r} is not supported (only default RoPE)")
    gemma = arch == "GemmaForCausalLM"
    act = cfg.get("hidden_activation") or cfg.get("hidden_act", "silu")
    eos = cfg.get("eos_token_id", 1)
    return DecoderConfig(
        vocab_size=n("vocab_size"), d_model=n("hidden_size"), num_heads=n("num_attention_heads"),
        head_dim=cfg.get("head_dim") or n("hidden_size") // n("num_attention_heads"),
        d_ff=n("intermediate_size"), num_layers=n("num_hidden_layers"),
        num_kv_heads=cfg.get("num_key_value_heads") or n("num_attention_heads"), block="sequential",
        activation="silu" if act == "silu" else "gelu", norm_eps=cfg.get("rms_norm_eps", 1e-6),
        norm_plus_one=gemma, embed_scale=gemma, tie_word_embeddings=bool(cfg.get("tie_word_embeddings", gemma)),
        rope_theta=float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0))), dtype=dtype,
        pad_id=cfg.get("pad_token_id") or 0, eos_id=eos[0] if isinstance(eos, list) else (eos if eos is not None else 1),
        bos_id=cfg.get("bos_token_id"))


# ---------------------------------------------------------------------- tensors
class TensorStore:
    """All tensors of a checkpoint directory, single-file or sharded, opened lazily."""

    def __init__(self, path: str):
        self.path = path
        index = os.path.join(path, "model.safetensors.index.json")
        single = os.path.join(path, "model.safetensors")
        if os.path.isfile(index):
            try:
                with open(index, encoding="utf-8") as f:
                    weight_map = json.load(f)["weight_map"]
            except (json.JSONDecodeError, KeyError, UnicodeDecodeError) as e:
                raise CheckpointError(f"{index}: corrupt safetensors index ({e!r})") from None
            self._where = {name: os.path.join(path, fn) for name, fn in weight_map.items()}
        elif os.path.isfile(single):
            self._where = None
            self._single = single
        else:
            raise CheckpointError(f"{path}: no model.safetensors or model.safetensors.index.json "
                                  "(PyTorch .bin checkpoints: re-save with safe_serialization=True)")
        self._files: dict[str, SafetensorsFile] = {}

    def _open(self, fn: str) -> SafetensorsFile:
        if fn not in self._files:
            if not os.path.isfile(fn):
                raise CheckpointError(f"{fn}: shard listed in the index is missing")
            try:
                self._files[fn] = SafetensorsFile(fn)
            except SafetensorsError as e:
                raise CheckpointError(str(e)) from None
        return self._files[fn]

    def file_of(self, name: str) -> str | None:
        if self._where is None:
            return self._single if name in self._open(self._single).names else None
        return self._where.get(name)

    def get(self, name: str) -> np.ndarray:
        return self._open(self.file_of(name)).get(name)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._open(self.file_of(name)).shape(name)


def _place(arr: np.ndarray, dtype, sharding) -> jax.Array:
    if sharding is None:
        return jnp.asarray(arr, dtype=dtype)
    # Each device reads only its own slice of the memory-mapped tensor.
    return jax.make_array_from_callback(arr.shape, sharding, lambda idx: np.asarray(arr[idx], dtype=dtype))


def load_tensors(store: TensorStore, names, specs_flat: dict, dtype, shardings_flat: dict | None) -> dict:
    """Reads every (our path, HF names, transform) from `store`, checking names and shapes."""
    out = {}
    for ours, candidates, transform in names:
        hf = next((n for n in candidates if store.file_of(n) is not None), None)
        if hf is None:
            raise CheckpointError(f"{store.path}: missing tensor {candidates[0]!r} (for parameter {ours})")
        arr = transform(store.get(hf))
        want = specs_flat[ours].shape
        if tuple(arr.shape) != tuple(want):
            raise CheckpointError(f"{store.file_of(hf)}: tensor {hf!r} has shape {tuple(store.shape(hf))}, "
                                  f"expected {tuple(want[::-1]) if transform is TRANSPOSE else tuple(want)} for {ours}")
        out[ours] = _place(arr, dtype, None if shardings_flat is None else shardings_flat[ours])
    return out


def load_pretrained(path: str, *, param_dtype=jnp.float32, compute_dtype: str = "float32",
                    shardings: Any = None):
    """(model, params) from a Hugging Face checkpoint directory.

    Also reads the native checkpoints of `peft_jax.models.native`.
    Supported: MT5ForConditionalGeneration / T5ForConditionalGeneration (v1.1,
    gated MLP), LlamaForCausalLM, GemmaForCausalLM. `shardings`, a pytree of
    `jax.sharding.Sharding` matching the params (or a function model -> that
    tree), loads each tensor straight into its sharding.
    """
    path = os.fspath(path)
    if native.is_native(path):  # a checkpoint this project wrote itself (e.g. the demo's base)
        return native.load(path)
    cfg = read_config(path)
    cfg_path = os.path.join(path, "config.json")
    arch = _architecture(cfg, cfg_path)
    if arch in T5_ARCHS:
        model = T5Model(t5_config(cfg, cfg_path, compute_dtype))
    else:
        model = DecoderModel(decoder_config(cfg, arch, cfg_path, compute_dtype))
    if callable(shardings):
        shardings = shardings(model)
    specs_flat = flatten(model.param_specs())
    flat = load_tensors(TensorStore(path), model.hf_param_names(), specs_flat, param_dtype,
                        None if shardings is None else flatten(shardings))
    missing = sorted(set(specs_flat) - set(flat))
    if missing:  # a mapping bug, never a user error: every parameter must come from the file
        raise CheckpointError(f"{path}: parameters not filled from the checkpoint: {missing}")
    return model, unflatten(flat)
