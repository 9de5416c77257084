"""Checks of training configs: unknown fields (with the close ones), bad values; the PEFT sections and configs.

The PEFT part of a training config is built from the registered families: one section per family
holding its config dataclass's defaults (`peft_sections`), turned back into the dataclass by
`peft_config`, so the defaults are written once, in the family files.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import pathlib
from typing import Sequence

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


def check_values(config) -> None:
    """Range checks of the fields the loop relies on, each naming the field."""
    _require(config.objective in losses.OBJECTIVES,
             f"objective={config.objective!r}; expected one of {losses.OBJECTIVES}")
    _require(config.peft.family in families.names(),
             f"peft.family={config.peft.family!r}; expected one of {families.names()}")
    for name in ("num_steps", "batch_size", "micro_batches", "checkpoint_every", "keep_checkpoints", "log_every"):
        _require(int(config[name]) >= 1, f"{name} must be >= 1, got {config[name]}")
    _require(int(config.eval_every) >= 0 and int(config.eval_steps) >= 0,
             f"eval_every and eval_steps must be >= 0, got {config.eval_every}, {config.eval_steps}")
    _require(not config.model.checkpoint or config.data.tokenizer or config.data.source == "tokens",
             "model.checkpoint needs data.tokenizer (the checkpoint's own vocabulary): a tokenizer trained "
             "here would not match the checkpoint's token ids")
    _require(0.0 <= float(config.peft.sparse.dense_fraction) < 1.0,
             f"peft.sparse.dense_fraction must be in [0, 1), got {config.peft.sparse.dense_fraction}")


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
