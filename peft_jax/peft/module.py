"""The PEFT module pytree and the per-family configurations.

A `Module` holds the trainable parameters of one parameter-efficient method as a
plain nested dict whose paths mirror the base parameters it touches, e.g.
`encoder/layers_3/attention/query -> {lora_a, lora_b}`. Everything that is not
an array (the family config, whether leaves carry a leading batch axis, the
metadata) is static pytree data, so `jax.tree.map` over two modules works only
when their structures and configs agree.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from flax import struct

FAMILIES = ("lora", "prompt", "ia3", "adapter", "sparse")


class PeftConfigError(ValueError):
    """A PEFT configuration value is invalid."""


def _positive(name: str, value, family: str):
    if value is None or value <= 0:
        raise PeftConfigError(f"{family}: {name} must be > 0, got {value!r}")


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """LoRA: W x + scaling * B (A x) on every kernel whose module path matches `targets`.

    scaling = alpha / rank, or alpha / sqrt(rank) with rsLoRA.
    """

    targets: str = r".*attention/(query|key|value|out)$"
    rank: int = 8
    alpha: float = 16.0
    rslora: bool = False
    dropout: float = 0.0
    family: str = dataclasses.field(default="lora", init=False)

    def __post_init__(self):
        _positive("rank", self.rank, "lora")
        if not 0.0 <= self.dropout < 1.0:
            raise PeftConfigError(f"lora: dropout must be in [0, 1), got {self.dropout}")

    @property
    def scaling(self) -> float:
        return self.alpha / (math.sqrt(self.rank) if self.rslora else self.rank)


@dataclasses.dataclass(frozen=True)
class PromptConfig:
    """Prompt tuning: `length` soft tokens prepended to the encoder (or decoder) input.

    init: 'random' (normal, `init_scale`), 'vocab' (embeddings of sampled vocabulary
    rows) or 'text' (embeddings of `init_text` tokens, repeated to `length`).
    """

    length: int = 20
    init: str = "vocab"
    init_scale: float = 0.5
    init_text_ids: tuple[int, ...] = ()
    family: str = dataclasses.field(default="prompt", init=False)

    def __post_init__(self):
        _positive("length (prompt length)", self.length, "prompt")
        if self.init not in ("random", "vocab", "text"):
            raise PeftConfigError(f"prompt: init must be random|vocab|text, got {self.init!r}")
        if self.init == "text" and not self.init_text_ids:
            raise PeftConfigError("prompt: init='text' needs init_text_ids (token ids of the text)")


@dataclasses.dataclass(frozen=True)
class IA3Config:
    """(IA)^3: learned scales on keys, values (output side) and the MLP hidden (input of `wo`)."""

    targets: str = r".*attention/(key|value)$|.*mlp/wo$"
    feedforward: str = r".*mlp/wo$"
    family: str = dataclasses.field(default="ia3", init=False)


@dataclasses.dataclass(frozen=True)
class AdapterConfig:
    """Bottleneck adapters: x + up(act(down(x))) on sub-layer outputs.

    placement 'pfeiffer' puts one adapter after the MLP of each layer; 'houlsby'
    after both attention and MLP. bottleneck = d_model // reduction_factor.
    """

    placement: str = "pfeiffer"
    reduction_factor: int = 16
    activation: str = "relu"
    init_scale: float = 1e-3
    family: str = dataclasses.field(default="adapter", init=False)

    def __post_init__(self):
        _positive("reduction_factor", self.reduction_factor, "adapter")
        if self.placement not in ("pfeiffer", "houlsby"):
            raise PeftConfigError(f"adapter: placement must be pfeiffer|houlsby, got {self.placement!r}")
        if self.activation not in ("relu", "gelu", "silu"):
            raise PeftConfigError(f"adapter: activation must be relu|gelu|silu, got {self.activation!r}")


@dataclasses.dataclass(frozen=True)
class SparseConfig:
    """Sparse fine-tuning (LT-SFT): a delta on `density` of the entries of matching base leaves.

    The entries are chosen by magnitude of change after a short dense phase
    (`peft_jax.train.sparse.select`); until then `init` picks none.
    """

    targets: str = r".*(attention|mlp)/\w+/kernel$"
    density: float = 0.01
    family: str = dataclasses.field(default="sparse", init=False)

    def __post_init__(self):
        if not 0.0 < self.density <= 1.0:
            raise PeftConfigError(f"sparse: density must be in (0, 1], got {self.density}")


CONFIG_CLASSES = {
    "lora": LoraConfig,
    "prompt": PromptConfig,
    "ia3": IA3Config,
    "adapter": AdapterConfig,
    "sparse": SparseConfig,
}

PeftConfig = LoraConfig | PromptConfig | IA3Config | AdapterConfig | SparseConfig


def config_to_dict(config: PeftConfig) -> dict[str, Any]:
    """JSON-friendly dict of a config, including its `family`."""
    out = dataclasses.asdict(config)
    if "init_text_ids" in out:
        out["init_text_ids"] = list(out["init_text_ids"])
    return out


def config_from_dict(d: dict[str, Any]) -> PeftConfig:
    """Inverse of `config_to_dict`; unknown families and fields are clear errors."""
    d = dict(d)
    family = d.pop("family", None)
    if family not in CONFIG_CLASSES:
        raise PeftConfigError(f"unknown PEFT family {family!r}; expected one of {FAMILIES}")
    cls = CONFIG_CLASSES[family]
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(d) - names)
    if unknown:
        raise PeftConfigError(f"{family}: unknown config fields {unknown}; known: {sorted(names)}")
    if "init_text_ids" in d:
        d["init_text_ids"] = tuple(d["init_text_ids"])
    return cls(**d)


@struct.dataclass
class Module:
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

    def with_metadata(self, **updates) -> "Module":
        """A copy whose metadata has `updates` merged in."""
        meta = self.metadata
        meta.update(updates)
        return self.replace(metadata_json=json.dumps(meta, sort_keys=True))

    @property
    def base_fingerprint(self) -> str | None:
        return self.metadata.get("base_fingerprint")
