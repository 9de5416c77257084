"""The PEFT module pytree (`PeftModule`) and the (de)serialisation of family configs.

A `PeftModule` holds the trainable parameters of one parameter-efficient method as a
plain nested dict whose paths mirror the base parameters it touches, e.g.
`encoder/layers_3/attention/query -> {lora_a, lora_b}`. Everything that is not
an array (the family config, whether leaves carry a leading batch axis, the
metadata) is static pytree data, so `jax.tree.map` over two modules works only
when their structures and configs agree.

The config dataclasses live with their families (`peft_jax.peft.families.<name>`) and are
re-exported here under their usual names. `Module` is the former name of `PeftModule`.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from flax import struct

from peft_jax.peft import families
from peft_jax.peft.errors import PeftConfigError
from peft_jax.peft.families.adapter import AdapterConfig
from peft_jax.peft.families.ia3 import IA3Config
from peft_jax.peft.families.lora import LoraConfig
from peft_jax.peft.families.prompt import PromptConfig
from peft_jax.peft.families.sparse import SparseConfig

__all__ = ["AdapterConfig", "IA3Config", "LoraConfig", "Module", "PeftConfigError", "PeftModule", "PromptConfig",
           "SparseConfig", "config_from_dict", "config_to_dict"]


def config_to_dict(config) -> dict[str, Any]:
    """JSON-friendly dict of a config, including its `family` (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}


def config_from_dict(d: dict[str, Any]):
    """Inverse of `config_to_dict`; unknown families and fields are clear errors."""
    d = dict(d)
    family = d.pop("family", None)
    if family not in families.names():
        raise PeftConfigError(f"unknown PEFT family {family!r}; expected one of {families.names()}")
    cls = families.get(family).config_class
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(d) - names)
    if unknown:
        raise PeftConfigError(f"{family}: unknown config fields {unknown}; known: {sorted(names)}")
    # Configs are static pytree data and must stay hashable: JSON lists come back as tuples, at every depth
    # (LoRA's in_axes is a tuple of (regex, axes) pairs).
    return cls(**{k: _tuples(v) for k, v in d.items()})


def _tuples(v):
    return tuple(_tuples(x) for x in v) if isinstance(v, (list, tuple)) else v


@struct.dataclass
class PeftModule:
    """One PEFT module: `params` (the only pytree leaves) plus static config and metadata.

    batched: every leaf carries a leading batch axis, so row b of a batch uses
    module b (per-example composition in one decode batch).
    metadata_json: provenance (base fingerprint, training run, composition
    inputs...) as canonical JSON, kept static so the module stays hashable.
    """

    params: dict
    config: Any = struct.field(pytree_node=False)
    batched: bool = struct.field(pytree_node=False, default=False)
    metadata_json: str = struct.field(pytree_node=False, default="{}")

    @property
    def family(self) -> str:
        return self.config.family

    @property
    def metadata(self) -> dict:
        return json.loads(self.metadata_json)

    def with_metadata(self, **updates) -> "PeftModule":
        """A copy whose metadata has `updates` merged in."""
        meta = self.metadata
        meta.update(updates)
        return self.replace(metadata_json=json.dumps(meta, sort_keys=True))

    @property
    def base_fingerprint(self) -> str | None:
        return self.metadata.get("base_fingerprint")


Module = PeftModule
