"""Checks of training configs: unknown fields (with the close ones), bad values; the PEFT sections and configs.

The PEFT part of a training config is built from the registered families: one section per family
holding its config dataclass's defaults (`peft_sections`), turned back into the dataclass by
`peft_config`, so the defaults are written once, in the family files.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import json
import math
import numbers
import pathlib
from typing import Sequence

import jax.numpy as jnp
import ml_collections

from peft_jax.peft import families
from peft_jax.train import losses


class ConfigError(ValueError):
    """A config field that does not exist, or a value out of range."""


def field_paths(config, prefix: str = "") -> list[str]:
    """Every leaf field of a ConfigDict as a dotted path ('optimizer.learning_rate')."""
    out = []
    for key, value in config.items():
        path = f"{prefix}{key}"
        out.extend(field_paths(value, path + ".") if isinstance(value, ml_collections.ConfigDict) else [path])
    return out


def unknown_field(path: str, known: Sequence[str]) -> ConfigError:
    """The error for a field that does not exist, naming the closest existing ones."""
    close = difflib.get_close_matches(path, known, n=5, cutoff=0.6)
    leaf = path.rsplit(".", 1)[-1]
    close += [k for k in known if k.rsplit(".", 1)[-1] == leaf and k not in close]
    hint = f"; did you mean {', '.join(close)}?" if close else f"; fields are: {', '.join(sorted(known))}"
    return ConfigError(f"unknown config field {path!r}{hint}")


def check_fields(config, reference) -> None:
    """Refuses fields of `config` that `reference` (the default config) does not have."""
    known = field_paths(reference)
    known_set = set(known) | {p.rsplit(".", 1)[0] for p in known}
    for path in field_paths(config):
        if path not in known_set:
            raise unknown_field(path, known)


def _load_config_module(spec: str):
    """(module, arg) of a `--config=path.py[:arg]` value."""
    path, _, arg = spec.partition(":")
    if not pathlib.Path(path).is_file():
        raise ConfigError(f"--config: config file {path!r} does not exist")
    module_spec = importlib.util.spec_from_file_location("_train_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module, arg or None


def check_overrides(argv: Sequence[str], flag: str = "config") -> None:
    """Checks `--config.a.b=v` overrides against the config file before absl parses them.

    absl/ml_collections would fail with a traceback; this names the field and
    the close existing ones instead.
    """
    spec = next((a.split("=", 1)[1] for a in argv if a.startswith(f"--{flag}=")), None)
    overrides = [a[len(flag) + 3:].split("=", 1)[0] for a in argv if a.startswith(f"--{flag}.")]
    if spec is None or not overrides:
        return
    module, arg = _load_config_module(spec)
    config = module.get_config(arg) if arg is not None else module.get_config()
    known = field_paths(config)
    for path in overrides:
        if path not in known and path not in {k.rsplit(".", 1)[0] for k in known}:
            raise unknown_field(path, known)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


# Integer fields and their minimum (None: any integer).
INT_FIELDS = {
    "num_steps": 1, "batch_size": 1, "micro_batches": 1, "checkpoint_every": 1, "keep_checkpoints": 1,
    "log_every": 1, "eval_every": 0, "eval_steps": 0, "seed": 0, "model.init_seed": 0,
    "optimizer.warmup_steps": 0, "data.world_seed": 0, "data.num_examples": 1, "data.eval_examples": 0,
    "data.vocab_size": 1, "data.extra_ids": 0, "data.input_length": 1, "data.target_length": 1,
    "data.num_threads": 1,
}
# Real fields and their range as (low, high, low included, high included); every one must be finite.
INF = float("inf")
FLOAT_FIELDS = {
    "z_loss": (0.0, INF, True, False),
    "optimizer.learning_rate": (0.0, INF, False, False),
    "optimizer.end_lr_ratio": (0.0, 1.0, True, True),
    "optimizer.clip_norm": (0.0, INF, True, False),
    "optimizer.weight_decay": (0.0, INF, True, False),
    "optimizer.b1": (0.0, 1.0, True, False),
    "optimizer.b2": (0.0, 1.0, True, False),
    "optimizer.eps": (0.0, INF, False, False),
    "optimizer.adafactor_decay_rate": (0.0, 1.0, False, True),
    "data.noise_density": (0.0, 1.0, False, False),
    "data.mean_noise_span_length": (0.0, INF, False, False),
    "peft.sparse.dense_fraction": (0.0, 1.0, True, False),
}


def _get(config, path: str):
    """The value at dotted `path`, or a sentinel where the config has no such field."""
    node = config
    for key in path.split("."):
        if not hasattr(node, "keys") or key not in node.keys():
            return _MISSING
        node = node[key]
    return node


def get_field(config, path: str):
    """The value at dotted `path` (a sentinel that equals only itself where the config has no such field)."""
    return _get(config, path)


_MISSING = object()


def _check_int(path: str, value, minimum: int | None) -> None:
    _require(isinstance(value, numbers.Integral) and not isinstance(value, bool),
             f"{path} must be an integer, got {value!r} ({type(value).__name__})")
    _require(minimum is None or value >= minimum, f"{path} must be >= {minimum}, got {value}")


def _check_float(path: str, value, bounds) -> None:
    low, high, low_in, high_in = bounds
    _require(isinstance(value, numbers.Real) and not isinstance(value, bool),
             f"{path} must be a number, got {value!r} ({type(value).__name__})")
    value = float(value)
    inside = (value >= low if low_in else value > low) and (value <= high if high_in else value < high)
    _require(math.isfinite(value) and inside,
             f"{path} must be a finite number in {'[' if low_in else '('}{low:g}, {high:g}{']' if high_in else ')'}, "
             f"got {value}")


def check_dtype(path: str, value) -> None:
    """A compute dtype must be a floating type: integer or boolean activations make every logit constant."""
    try:
        dtype = jnp.dtype(value)
    except TypeError:
        dtype = None
    _require(dtype is not None and jnp.issubdtype(dtype, jnp.floating),
             f"{path}={value!r} is not a floating-point dtype; use float32, bfloat16 or float16")


def check_values(config) -> None:
    """Type and range checks of every number the loop uses, each naming the field, before anything runs."""
    _require(config.objective in losses.OBJECTIVES,
             f"objective={config.objective!r}; expected one of {losses.OBJECTIVES}")
    _require(config.peft.family in families.names(),
             f"peft.family={config.peft.family!r}; expected one of {families.names()}")
    for path, minimum in INT_FIELDS.items():
        if (value := _get(config, path)) is not _MISSING:
            _check_int(path, value, minimum)
    for path, bounds in FLOAT_FIELDS.items():
        if (value := _get(config, path)) is not _MISSING:
            _check_float(path, value, bounds)
    check_dtype("model.dtype", config.model.dtype)
    _require(not config.model.checkpoint or config.data.tokenizer or config.data.source == "tokens",
             "model.checkpoint needs data.tokenizer (the checkpoint's own vocabulary): a tokenizer trained "
             "here would not match the checkpoint's token ids")


# Fields that may change between a run and its resumption: how it is laid out, logged and checkpointed,
# and how far it goes (num_steps, checked on its own). Paths (base checkpoint, data, tokenizer) may move
# with the workdir; the base itself is compared by its fingerprint.
RESUME_FREE = ("num_steps", "micro_batches", "log_every", "eval_every", "eval_steps", "checkpoint_every",
               "keep_checkpoints", "progress_bar", "tensorboard", "mesh", "logical_axis_rules", "distributed",
               "peft.sharding", "data.num_threads", "model.checkpoint", "data.paths", "data.eval_paths",
               "data.tokenizer")


def resume_record(config) -> dict:
    """{dotted field: value} of everything a resumed run must share with the run that wrote the checkpoint."""
    flat = {}
    for path in field_paths(config):
        if not any(path == f or path.startswith(f + ".") for f in RESUME_FREE):
            value = _get(config, path)
            flat[path] = list(value) if isinstance(value, tuple) else value
    return json.loads(json.dumps(flat, default=str))  # as it reads back from JSON


def resume_differences(saved: dict, current: dict) -> list[str]:
    """'field: checkpoint V, now W' for every field that differs (missing fields count as differing)."""
    missing = object()
    keys = sorted(set(saved) | set(current))
    return [f"{k}: checkpoint {saved.get(k, missing)!r}, now {current.get(k, missing)!r}".replace(
        repr(missing), "(absent)") for k in keys if saved.get(k, missing) != current.get(k, missing)]


def _defaults(config_class) -> dict:
    """{field: default} of a config dataclass's constructor fields."""
    fields = [f for f in dataclasses.fields(config_class) if f.init]
    return {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory() for f in fields}


def peft_sections() -> ml_collections.ConfigDict:
    """One section per registered PEFT family: its config's defaults and its training-schedule knobs."""
    return ml_collections.ConfigDict({name: {**_defaults(families.get(name).config_class),
                                             **families.get(name).schedule_fields} for name in families.names()})


def peft_config(cfg):
    """The PEFT dataclass config of `cfg.family` from its section (`cfg.lora`, `cfg.prompt`, ...)."""
    family = families.get(cfg.family)
    # Schedule knobs (sparse: dense_fraction) steer training, they are not part of the module; configs
    # are hashable, so sequences become tuples.
    fields = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in dict(cfg[cfg.family]).items()
              if k not in family.schedule_fields}
    try:
        return family.config_class(**fields)
    except TypeError as e:
        raise ConfigError(f"peft.{cfg.family}: {e}") from None
