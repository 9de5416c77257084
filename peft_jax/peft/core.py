"""Creating, counting, merging and fingerprinting PEFT modules.

`init` builds a module whose paths mirror the base parameters it touches; a
fresh module leaves the model's output unchanged (LoRA B = 0, (IA)^3 scales 1,
adapter up-projections 0, sparse values 0); prompts are the exception, since a
prompt changes the input by construction.
"""

from __future__ import annotations

import hashlib
import math

import jax
import jax.numpy as jnp
import numpy as np

from peft_jax import tree as tu
from peft_jax.peft.module import (AdapterConfig, IA3Config, LoraConfig, Module, PeftConfigError, PromptConfig,
                                  SparseConfig)


class TargetError(ValueError):
    """A target regex matches no parameter, or a module does not fit a base."""


def _kernel_modules(model) -> dict[str, tuple]:
    """{module path: kernel spec} for every 2-D kernel of the model."""
    flat = tu.flatten(model.param_specs(), is_leaf=lambda x: hasattr(x, "axes"))
    return {p[: -len("/kernel")]: s for p, s in flat.items() if p.endswith("/kernel")}


def _match(paths, pattern: str, what: str) -> list[str]:
    hits = tu.select(paths, pattern)
    if not hits:
        shown = "\n  ".join(sorted(paths)[:60])
        raise TargetError(f"{what} regex {pattern!r} matches no parameter path; available paths:\n  {shown}")
    return hits


def _key(rng, path: str):
    return jax.random.fold_in(rng, int(hashlib.md5(path.encode()).hexdigest()[:7], 16))


def _init_lora(model, cfg: LoraConfig, rng) -> dict:
    kernels = _kernel_modules(model)
    out = {}
    for path in _match(kernels, cfg.targets, "lora targets"):
        d_in, d_out = kernels[path].shape
        bound = 1.0 / math.sqrt(d_in)  # Kaiming-uniform(a=sqrt(5)) bound, as in the reference LoRA
        a = jax.random.uniform(_key(rng, path), (d_in, cfg.rank), jnp.float32, -bound, bound)
        out[path] = {"lora_a": a, "lora_b": jnp.zeros((cfg.rank, d_out), jnp.float32)}
    return out


def _init_ia3(model, cfg: IA3Config, rng) -> dict:
    kernels = _kernel_modules(model)
    out = {}
    for path in _match(kernels, cfg.targets, "ia3 targets"):
        d_in, d_out = kernels[path].shape
        ff = bool(tu.select([path], cfg.feedforward))
        out[path] = {"ia3_in": jnp.ones((d_in,))} if ff else {"ia3_out": jnp.ones((d_out,))}
    return out


def _layer_paths(model) -> list[str]:
    kernels = _kernel_modules(model)
    return sorted({p.split("/attention")[0].split("/self_attention")[0] for p in kernels
                   if p.endswith(("attention/query", "self_attention/query"))})


def _init_adapter(model, cfg: AdapterConfig, rng) -> dict:
    d = model.config.d_model
    k = max(1, d // cfg.reduction_factor)
    keys = ["mlp_adapter"] if cfg.placement == "pfeiffer" else ["attention_adapter", "mlp_adapter"]
    out = {}
    for layer in _layer_paths(model):
        for key in keys + (["cross_adapter"] if cfg.placement == "houlsby" and layer.startswith("decoder/") else []):
            path = f"{layer}/{key}"
            out[path] = {"down": cfg.init_scale * jax.random.normal(_key(rng, path), (d, k)),
                         "down_bias": jnp.zeros((k,)), "up": jnp.zeros((k, d)), "up_bias": jnp.zeros((d,))}
    return out


def _init_prompt(model, cfg: PromptConfig, rng, params) -> dict:
    d = model.config.d_model
    if cfg.init == "random":
        return {"prompt": {"embedding": cfg.init_scale * jax.random.normal(rng, (cfg.length, d))}}
    if params is None:
        raise PeftConfigError(f"prompt: init={cfg.init!r} needs the base params (peft.init(..., params=params))")
    table = params["token_embedder"]["embedding"]
    if cfg.init == "vocab":  # rows of the embedding of frequent-ish tokens (Lester et al. 2021 use the top 5k)
        ids = jax.random.randint(rng, (cfg.length,), 0, min(5000, table.shape[0]))
    else:
        ids = jnp.resize(jnp.asarray(cfg.init_text_ids, jnp.int32), (cfg.length,))
    return {"prompt": {"embedding": jnp.asarray(table[ids], jnp.float32)}}


def _init_sparse(model, cfg: SparseConfig, rng) -> dict:
    flat = tu.flatten(model.param_specs(), is_leaf=lambda x: hasattr(x, "axes"))
    out = {}
    for path in _match(flat, cfg.targets, "sparse targets"):
        size = int(np.prod(flat[path].shape))
        n = max(1, int(round(cfg.density * size)))
        idx = jnp.sort(jax.random.choice(_key(rng, path), size, (n,), replace=False)).astype(jnp.int32)
        out[path] = {"indices": idx, "values": jnp.zeros((n,), jnp.float32)}
    return out


def init(model, config, rng: jax.Array, *, params: dict | None = None) -> Module:
    """A fresh module of `config`'s family for `model` (params only needed for prompt init from the vocabulary)."""
    if isinstance(config, LoraConfig):
        flat = _init_lora(model, config, rng)
    elif isinstance(config, IA3Config):
        flat = _init_ia3(model, config, rng)
    elif isinstance(config, AdapterConfig):
        flat = _init_adapter(model, config, rng)
    elif isinstance(config, PromptConfig):
        return Module(params=_init_prompt(model, config, rng, params), config=config)
    elif isinstance(config, SparseConfig):
        return Module(params=tu.unflatten(_init_sparse(model, config, rng)), config=config)
    else:
        raise PeftConfigError(f"not a PEFT config: {config!r}")
    return Module(params=tu.unflatten(flat), config=config)


def count(params: dict, peft: Module | None = None) -> dict:
    """Total, trainable (PEFT) and fraction-trainable parameter counts."""
    base = int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))
    trainable = 0 if peft is None else int(sum(np.prod(x.shape) for x in jax.tree.leaves(peft.params)))
    if isinstance(getattr(peft, "config", None), SparseConfig):
        trainable //= 2  # indices are not trainable: only the values count
    total = base + (0 if isinstance(getattr(peft, "config", None), SparseConfig) else trainable)
    return {"total": total, "trainable": trainable, "fraction_trainable": trainable / max(total, 1)}


def fingerprint(params: dict) -> str:
    """A short hash of a base checkpoint: every leaf's path, shape, dtype and a strided sample of its values.

    Cheap (≤ 64 values per leaf leave the devices) and sensitive to the usual
    mistakes: another checkpoint, another size, another dtype.
    """
    h = hashlib.sha256()
    for path, leaf in sorted(tu.flatten(params).items()):
        h.update(f"{path}:{tuple(leaf.shape)}:{jnp.dtype(leaf.dtype).name};".encode())
        h.update(np.asarray(_sample(leaf), dtype=np.float32).tobytes())
    return h.hexdigest()[:16]


def _sample(leaf, n: int = 64):
    """≤ n evenly strided values of a leaf; for an array split across hosts, gathered replicated in a jit."""
    stride = max(1, int(np.prod(leaf.shape)) // n)
    take = lambda x: x.reshape(-1)[::stride][:n]
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
        replicated = jax.sharding.NamedSharding(leaf.sharding.mesh, jax.sharding.PartitionSpec())
        return jax.jit(take, out_shardings=replicated)(leaf)
    return take(leaf)


def check_base(params: dict, module: Module) -> None:
    """Refuses a module trained on another base (fingerprint recorded in its metadata)."""
    want = module.base_fingerprint
    if want is None:
        return
    got = fingerprint(params)
    if got != want:
        raise TargetError(f"module was trained on base {want}, but these base params have fingerprint {got}: "
                          "a module must be applied to the checkpoint it was trained on")


def _modules(peft) -> list[Module]:
    return [peft] if isinstance(peft, Module) else list(peft)


def _fold(params: dict, module: Module, sign: int) -> dict:
    """Merges (sign=+1) or un-merges (sign=-1) one module into a copy of `params`."""
    fam = module.family
    if fam in ("prompt", "adapter"):
        raise ValueError(f"{fam} modules change the computation, not the weights: they cannot be merged")
    if module.batched:
        raise ValueError("a batched (per-example) module cannot be merged into one set of weights")
    flat = tu.flatten(params)
    for path, node in tu.flatten(module.params, is_leaf=lambda x: isinstance(x, dict) and (
            "lora_a" in x or "ia3_in" in x or "ia3_out" in x or "indices" in x)).items():
        key = path if fam == "sparse" else f"{path}/kernel"
        if key not in flat:
            raise TargetError(f"module parameter {path} has no base leaf {key}")
        w = flat[key].astype(jnp.float32)
        if fam == "lora":
            w = w + sign * module.config.scaling * (node["lora_a"] @ node["lora_b"])
        elif fam == "ia3":
            s = node.get("ia3_out", node.get("ia3_in"))
            s = s if sign > 0 else 1.0 / s
            w = w * (s[None, :] if "ia3_out" in node else s[:, None])
        else:
            w = w.reshape(-1).at[node["indices"]].add(sign * node["values"]).reshape(w.shape)
        flat[key] = w.astype(flat[key].dtype)
    return tu.unflatten(flat)


def merge(params: dict, peft) -> dict:
    """Base params with LoRA, (IA)^3 and sparse modules folded in (in order); the input is not modified."""
    for m in _modules(peft):
        check_base(params, m) if m.base_fingerprint else None
        params = _fold(params, m, +1)
    return params


def unmerge(params: dict, peft) -> dict:
    """Inverse of `merge` (up to float rounding)."""
    for m in reversed(_modules(peft)):
        params = _fold(params, m, -1)
    return params


def logical_axes(model, module: Module) -> dict:
    """Logical axis names of each module leaf, derived from the base leaf it touches."""
    specs = tu.flatten(model.param_specs(), is_leaf=lambda x: hasattr(x, "axes"))
    P = jax.sharding.PartitionSpec

    def axes(path, leaf):
        p = tu.path_str(path)
        parent, name = p.rsplit("/", 1) if "/" in p else ("", p)
        batch = ("batch",) if module.batched else ()
        base = specs.get(parent + "/kernel")
        if name == "lora_a" and base:
            return P(*batch, base.axes[0], None)
        if name == "lora_b" and base:
            return P(*batch, None, base.axes[1])
        if name == "ia3_in" and base:
            return P(*batch, base.axes[0])
        if name == "ia3_out" and base:
            return P(*batch, base.axes[1])
        return P(*batch, *([None] * (leaf.ndim - len(batch))))

    return jax.tree_util.tree_map_with_path(axes, module.params)
