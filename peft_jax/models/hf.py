"""`load_pretrained`: a checkpoint in any format we read -> (model, params), strictly.

Formats (`models/checkpoints/`): Hugging Face directories (config.json + safetensors, sharded or not;
pytorch_model.bin; flax_model.msgpack), Hub ids, t5x checkpoints (legacy and Orbax, with a model
description passed as `model=`), and this project's native checkpoints. The model comes from config.json
(`hf_config`, which refuses fields it cannot honour), the tensor names from the model's name table
(`hf_names`). Each tensor is read lazily, transposed to our `[in, out]` kernels, cast and placed, into a
given sharding if one is passed (each device reads only its slice). Every tensor of the file must be
used: one left over fails the load, named, since it would mean the model computes something else.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from peft_jax import fileio
from peft_jax.models import hf_config, native
from peft_jax.models.checkpoints import flax_msgpack, hf_safetensors, hub, t5x, torch_bin
from peft_jax.models.checkpoints.base import TensorSource
from peft_jax.models.errors import CheckpointError
from peft_jax.models.hf_names import IDENTITY, TRANSPOSE
from peft_jax.models.presets import PRESETS
from peft_jax.models.registry import model_for_config
from peft_jax.models.spec import flatten, unflatten

# Tensors transformers itself never reads: T5's cross-attention never has a relative-position table, yet
# original T5 checkpoints hold one (transformers lists it in `_keys_to_ignore_on_load_unexpected`).
IGNORED = {"t5": {"decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight"}}
# Names that alias another tensor (tied copies written by older savers): used if equal to their target.
ALIASES = {"t5": {"encoder.embed_tokens.weight": "shared.weight", "decoder.embed_tokens.weight": "shared.weight",
                  "lm_head.weight": "shared.weight"},
           "decoder": {"lm_head.weight": "model.embed_tokens.weight"}}
# Config fields that set each logical axis of a parameter, and the layer counts, for error messages.
AXIS_FIELDS = {"t5": {"vocab": "vocab_size", "embed": "d_model", "heads": "num_heads, d_kv", "mlp": "d_ff",
                      "relpos_buckets": "relative_attention_num_buckets"},
               "decoder": {"vocab": "vocab_size", "embed": "hidden_size", "heads": "num_attention_heads, head_dim",
                           "kv_heads": "num_key_value_heads, head_dim", "mlp": "intermediate_size"}}
LAYER_FIELDS = {"t5": {"encoder.block.": "num_layers", "decoder.block.": "num_decoder_layers"},
                "decoder": {"model.layers.": "num_hidden_layers"}}


# ------------------------------------------------------------------------ configs
def read_config(path: str) -> dict:
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        raise CheckpointError(f"{cfg_path}: missing config.json (expected a Hugging Face checkpoint directory; "
                              "a t5x checkpoint needs `model=`)")
    try:
        with open(cfg_path, encoding="utf-8") as f:
            cfg = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{cfg_path}: corrupt config.json ({e})") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{cfg_path}: config.json must hold a JSON object")
    return cfg


def hf_source(path: str) -> TensorSource:
    """The weights of a Hugging Face directory, in the first format present (safetensors first)."""
    for fmt, source in ((hf_safetensors, hf_safetensors.SafetensorsSource), (torch_bin, torch_bin.TorchBinSource),
                        (flax_msgpack, flax_msgpack.FlaxMsgpackSource)):
        if fmt.found(path):
            return source(path)
    raise CheckpointError(f"{path}: no weights found (model.safetensors[.index.json], pytorch_model.bin[.index.json] "
                          "or flax_model.msgpack; TensorFlow tf_model.h5 is not read)")


def _equal(source: TensorSource, a: str, b: str) -> bool:
    """Whether two tensors hold the same values, compared in blocks of rows (an embedding table can be
    gigabytes; distinct tables differ in the first block). Each pair is read once per load: the head and
    input resolvers and the unused-tensor check ask about the same aliases."""
    cache = source.__dict__.setdefault("_equal_pairs", {})
    key = frozenset((a, b))
    if key not in cache:
        cache[key] = _compare(source, a, b)
    return cache[key]


def _compare(source: TensorSource, a: str, b: str) -> bool:
    x, y = source.get(a), source.get(b)
    if x.shape != y.shape:
        return False
    if not x.shape:
        return bool(np.array_equal(x[...], y[...]))
    n, step = x.shape[0], max(1, 2**24 // max(1, int(np.prod(x.shape[1:]))))
    return all(np.array_equal(x[i:min(i + step, n)], y[i:min(i + step, n)]) for i in range(0, n, step))


def resolve_head(model_type: str, config, source: TensorSource, cfg_path: str):
    """The config with the output head the file holds, as transformers 5 reads it: an `lm_head.weight`
    that differs from the embedding is used even if config.json ties them (transformers warns "will NOT
    tie"); a tied head needs no tensor."""
    emb = "shared.weight" if model_type in hf_config.T5_TYPES else "model.embed_tokens.weight"
    tie = config.tie_word_embeddings
    distinct = "lm_head.weight" in source and emb in source and not _equal(source, "lm_head.weight", emb)
    if distinct and tie:
        if model_type == "t5":  # T5 would rescale the decoder output before an untied head: not implemented
            raise CheckpointError(f"{cfg_path}: tie_word_embeddings=true with a distinct lm_head.weight in the file "
                                  "(a rescaled untied T5 head) is not supported")
        return dataclasses.replace(config, tie_word_embeddings=False)
    if tie and model_type == "mt5":
        raise CheckpointError(f"{cfg_path}: tie_word_embeddings=true and no distinct lm_head.weight: transformers 4 "
                              "and 5 compute such an mT5 differently (5 drops the d_model**-0.5 rescaling); "
                              "refusing to guess")
    return config


def resolve_inputs(config, source: TensorSource) -> tuple[Any, set[str]]:
    """A T5 config with the input tables the file holds: an `encoder.` / `decoder.embed_tokens.weight` that
    differs from `shared.weight` is that stack's own table (transformers does not tie them then). When both
    stacks and the head have their own, transformers keeps `shared.weight` without computing with it: it is
    returned as the one tensor left unread."""
    own = {}
    for stack in ("encoder", "decoder"):
        name = f"{stack}.embed_tokens.weight"
        own[stack] = name in source and "shared.weight" in source and not _equal(source, name, "shared.weight")
    config = dataclasses.replace(config, encoder_embedding=own["encoder"], decoder_embedding=own["decoder"])
    unread = {"shared.weight"} if own["encoder"] and own["decoder"] and not config.tie_word_embeddings else set()
    return config, unread


# ---------------------------------------------------------------------- tensors
def _place(arr, dtype, sharding) -> jax.Array:
    if sharding is None:
        return jnp.asarray(np.asarray(arr[...]), dtype=dtype)
    # Each device reads only its own slice of the tensor.
    return jax.make_array_from_callback(arr.shape, sharding, lambda idx: np.asarray(arr[idx], dtype=dtype))


class Hints:
    """Which config.json fields explain a missing, mis-shaped or unused tensor (for error messages)."""

    def __init__(self, kind: str | None, cfg: dict | None):
        self.kind, self.cfg = kind, cfg or {}

    def fields(self, *names: str) -> str:
        if not self.kind:
            return ""
        shown = [f"{n}={self.cfg[n]!r}" if n in self.cfg else f"{n} not set"
                 for group in names if group for n in group.split(", ")]
        return f" (config.json: {', '.join(dict.fromkeys(shown))})" if shown else ""

    def shape(self, spec) -> str:
        return self.fields(*(AXIS_FIELDS.get(self.kind, {}).get(a, "") for a in spec.axes if a))

    def layer(self, hf_name: str, beyond_only: bool = False) -> str:
        """The layer count (or tying) field behind a tensor name; with `beyond_only`, only for a layer
        index the config does not have."""
        for prefix, field in LAYER_FIELDS.get(self.kind, {}).items():
            if hf_name.startswith(prefix):
                index = hf_name[len(prefix):].split(".", 1)[0]
                count = self.cfg.get(field)
                if beyond_only and not (index.isdigit() and isinstance(count, int) and int(index) >= count):
                    return ""
                return self.fields(field)
        return self.fields("tie_word_embeddings") if "lm_head" in hf_name else ""


def load_tensors(source: TensorSource, names, specs_flat: dict, dtype, shardings_flat: dict | None,
                 hints: Hints) -> tuple[dict, set[str]]:
    """(our params, names used) read from `source` per the (our path, names, transform) table."""
    out, used = {}, set()
    for ours, candidates, transform in names:
        name = next((n for n in candidates if n in source), None)
        if name is None:
            raise CheckpointError(f"{source.path}: missing tensor {candidates[0]!r} (for parameter {ours})"
                                  f"{hints.layer(candidates[0])}")
        arr = transform(source.get(name))
        spec = specs_flat[ours]
        if tuple(arr.shape) != tuple(spec.shape):
            want = spec.shape[::-1] if transform is TRANSPOSE else spec.shape
            raise CheckpointError(f"{source.get(name).where}: tensor {name!r} has shape "
                                  f"{tuple(source.get(name).shape)}, expected {tuple(want)} for {ours}"
                                  f"{hints.shape(spec)}")
        out[ours] = _place(arr, dtype, None if shardings_flat is None else shardings_flat[ours])
        used.add(name)
    return out, used


def check_all_used(source: TensorSource, used: set[str], kind: str | None, hints: Hints) -> None:
    """Refuses a checkpoint holding a tensor the model did not read (aliases equal to what they copy and
    tensors transformers ignores too excepted)."""
    left = set(source.names()) - used - IGNORED.get(kind, set())
    for alias, target in ALIASES.get(kind, {}).items():
        if alias in left and target in used and _equal(source, alias, target):
            left.discard(alias)
    if left:
        first = min(left, key=_natural)
        raise CheckpointError(f"{source.tensors[first].where}: tensor {first!r} is "
                              f"not used by the model{hints.layer(first, beyond_only=True)}"
                              + (f"; {len(left) - 1} more unused: {sorted(left - {first}, key=_natural)[:5]}"
                                 if len(left) > 1 else ""))


def _natural(name: str):
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


# ----------------------------------------------------------------------- models
def described_model(model: Any, compute_dtype: str):
    """A model from a description: a preset name, a config dataclass, or a model."""
    if isinstance(model, str):
        if model not in PRESETS:
            raise CheckpointError(f"unknown model preset {model!r}; known: {sorted(PRESETS)}")
        model = PRESETS[model]
    config = getattr(model, "config", model)
    try:
        return model_for_config(dataclasses.replace(config, dtype=compute_dtype))
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"model= must be a preset name, a model config or a model, got {model!r} ({e})") \
            from None


def _open_t5x(path: str, model: Any, compute_dtype: str):
    """(model, source, name table, kind, hints, unread) of a t5x checkpoint: our names, the given model."""
    if model is None:
        raise CheckpointError(f"{path}: a t5x checkpoint holds no model description: pass model= (a preset name, "
                              "a T5Config or a model)")
    model = described_model(model, compute_dtype)
    names = [(p, (p,), IDENTITY) for p in flatten(model.param_specs())]
    return model, t5x.T5xSource(path), names, None, Hints(None, None), set()


def _open_hf(path: str, compute_dtype: str):
    """(model, source, name table, kind, hints, unread) of a Hugging Face directory."""
    cfg = read_config(path)
    cfg_path = os.path.join(path, "config.json")
    model_type, config = hf_config.model_config(cfg, cfg_path, compute_dtype)
    source = hf_source(path)
    kind = "t5" if model_type in hf_config.T5_TYPES else "decoder"
    config, unread = resolve_head(model_type, config, source, cfg_path), set()
    if kind == "t5":
        config, unread = resolve_inputs(config, source)
    model = model_for_config(config)
    return model, source, list(model.hf_param_names()), kind, Hints(kind, cfg), unread


def load_pretrained(path: str, *, model: Any = None, param_dtype=jnp.float32, compute_dtype: str = "float32",
                    shardings: Any = None):
    """(model, params) from a checkpoint directory or Hugging Face Hub id.

    Reads Hugging Face MT5/T5 v1.1, Llama (incl. Llama 3 rope scaling), Gemma and Gemma 2 checkpoints as
    safetensors, pytorch_model.bin (needs torch) or flax_model.msgpack; t5x checkpoints (legacy or
    Orbax) given `model=` (a preset name, a `T5Config`, or a model: t5x stores no description); and the
    native checkpoints of `peft_jax.models.native`. `shardings`, a pytree of `jax.sharding.Sharding`
    matching the params (or a function model -> that tree), loads each tensor straight into its sharding.
    """
    if fileio.is_remote(path):  # object storage: only the native format is read from there
        if native.is_native(path):
            return native.load(path)
        raise CheckpointError(f"{path}: only checkpoints written by peft_jax (models.native, e.g. a pipeline's base) "
                              "load from object storage; copy a Hugging Face or t5x checkpoint to a local disk "
                              "first (gsutil -m cp -r ...)")
    path = hub.resolve(os.fspath(path))
    if native.is_native(path):  # a checkpoint this project wrote itself (e.g. the demo's base)
        return native.load(path)
    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: checkpoint directory does not exist")
    if t5x.step_dir(path) is not None and not os.path.isfile(os.path.join(path, "config.json")):
        model, source, names, kind, hints, unread = _open_t5x(path, model, compute_dtype)
    else:
        if model is not None:
            raise CheckpointError(f"{path}: a Hugging Face checkpoint describes its model in config.json; model= is "
                                  "for t5x checkpoints only")
        model, source, names, kind, hints, unread = _open_hf(path, compute_dtype)
    if callable(shardings):
        shardings = shardings(model)
    specs_flat = flatten(model.param_specs())
    flat, used = load_tensors(source, names, specs_flat, param_dtype,
                              None if shardings is None else flatten(shardings), hints)
    check_all_used(source, used | unread, kind, hints)
    missing = sorted(set(specs_flat) - set(flat))
    if missing:  # a mapping bug, never a user error: every parameter must come from the file
        raise CheckpointError(f"{path}: parameters not filled from the checkpoint: {missing}")
    return model, unflatten(flat)
