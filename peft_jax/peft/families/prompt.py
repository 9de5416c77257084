"""Prompt tuning (Lester et al. 2021): `length` soft tokens prepended to the encoder (or decoder) input.

Params: {"prompt": {"embedding": [length, d_model]}}. Composition: `param` sums prompts of equal
length, `concat` joins [l_1 P_1; ...; l_n P_n]. A prompt of zeros still adds positions, so weight 0
does NOT give the base model, and a prompt cannot be folded into the weights.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from peft_jax.peft.errors import PeftConfigError
from peft_jax.peft.families.base import Family, leafwise_sum, require_count, require_positive


@dataclasses.dataclass(frozen=True)
class PromptConfig:
    """Prompt tuning: `length` soft tokens prepended to the encoder (or decoder) input.

    init: 'random' (normal, `init_scale`), 'vocab' (embeddings of sampled vocabulary
    rows) or 'text' (embeddings of `init_text_ids` tokens, repeated to `length`).
    """

    length: int = 20
    init: str = "vocab"
    init_scale: float = 0.5
    init_text_ids: tuple[int, ...] = ()
    family: str = dataclasses.field(default="prompt", init=False)

    def __post_init__(self):
        require_count("length (prompt length)", self.length, "prompt")
        require_positive("init_scale", self.init_scale, "prompt")
        if self.init not in ("random", "vocab", "text"):
            raise PeftConfigError(f"prompt: init must be random|vocab|text, got {self.init!r}")
        if self.init == "text" and not self.init_text_ids:
            raise PeftConfigError("prompt: init='text' needs init_text_ids (token ids of the text)")


def _concat(plan, P, w, extras):
    parts = [w[i] * p["prompt"]["embedding"].astype(jnp.float32) for i, p in enumerate(P)]
    return {"prompt": {"embedding": jnp.concatenate(parts, axis=0).astype(P[0]["prompt"]["embedding"].dtype)}}


class PromptFamily(Family):
    """Soft prompts: one [length, d_model] table per module, concatenated in module order."""

    name = "prompt"
    config_class = PromptConfig
    node_keys = frozenset({"embedding"})
    strategies = ("param", "concat", "stack")
    kernels = {"param": leafwise_sum, "concat": _concat}
    scaled_leaves = frozenset({"embedding"})
    bench_noise = {}

    def init(self, model, config: PromptConfig, rng, params):
        d = model.config.d_model
        if config.init == "random":
            return {"prompt": {"embedding": config.init_scale * jax.random.normal(rng, (config.length, d))}}
        if params is None:
            raise PeftConfigError(f"prompt: init={config.init!r} needs the base params (peft.init(..., params=params))")
        table = params["token_embedder"]["embedding"]
        if config.init == "vocab":  # rows of the embedding of frequent-ish tokens (Lester et al. 2021 use the top 5k)
            ids = jax.random.randint(rng, (config.length,), 0, min(5000, table.shape[0]))
        else:
            ids = jnp.resize(jnp.asarray(config.init_text_ids, jnp.int32), (config.length,))
        return {"prompt": {"embedding": jnp.asarray(table[ids], jnp.float32)}}

    def fit(self, path, node, shapes, config):
        table = shapes.get("token_embedder/embedding")
        if table is None:
            return "the base has no token_embedder/embedding to prepend a prompt to"
        if node["embedding"].shape[-1] != table[-1]:
            return f"prompt width {node['embedding'].shape[-1]}, but the base embeds tokens in {table[-1]} dimensions"
        return None

    def soft_prompt(self, view, batch_size, dtype):
        if "prompt" not in view.node:
            return None
        e = view.node["prompt"]["embedding"].astype(dtype)
        return e if view.batched else jnp.broadcast_to(e, (batch_size,) + e.shape)

    def free_axes(self, plan):
        # Concatenated prompts may have different lengths.
        return (lambda path: {0}) if plan.strategy == "concat" else (lambda path: set())

    def result_config(self, plan, configs, params):
        if plan.strategy != "concat":
            return configs[0]
        return dataclasses.replace(configs[0], length=int(params["prompt"]["embedding"].shape[-2]))

    def bench_config(self, section):
        # The benchmark starts both sides from the same random prompt (HF peft has no 'vocab' init of ours).
        return PromptConfig(length=section["length"], init="random", init_scale=section["init_scale"])

    def hf_state(self, module, names):
        return {"prompt_embeddings": np.asarray(module.params["prompt"]["embedding"], np.float32)}


FAMILY = PromptFamily()
