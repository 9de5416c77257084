"""LoRA: W x + s B (A x) on every kernel whose module path matches the targets (s = alpha/r, or alpha/sqrt(r)).

Factors are A [in, r] (Kaiming-uniform) and B [r, out] (zeros), in our [in, out] kernel layout.
Composition, with Phi_i = {A_i, B_i} and dW_i = s_i A_i B_i (see `peft_jax.compose.algebra`):

  param     A' = sum l_i A_i, B' = sum l_i B_i (the paper's; cross terms, equal ranks and scalings)
  negate_b  A' = sum |l_i| A_i, B' = sum l_i B_i (a lone module with l = -1 subtracts)
  delta     exact dW' = sum l_i s_i A_i B_i, stored as a LoRA (identity x dense delta, scaling 1)
  concat    exact and low rank: A' = [A_1 ... A_n], B' = [l_1 s_1 B_1; ...; l_n s_n B_n]
  svd       the exact dW' truncated by an SVD of the concat form; the dropped energy is recorded
  ties/dare on dW_i (space="delta", returns a dense delta as `delta` does) or on A, B (space="param")

HF peft stores lora_A.weight [r, in] and lora_B.weight [out, r] on torch Linear [out, in]: both are
our factors transposed.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from peft_jax import tree as tu
from peft_jax.peft.errors import CompositionError, HFPeftError, PeftConfigError
from peft_jax.peft.families import sites
from peft_jax.peft.families.base import (Family, Plan, check_in_axes, leafwise_sum, require_count, require_fraction,
                                         require_pattern, require_positive, weighted_sum)

_HIGHEST = jax.lax.Precision.HIGHEST


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
    in_axes: tuple = ()
    """((target regex, input axes), ...) for N-D kernels whose input axes are not inferred (`sites.Matrix`)."""
    family: str = dataclasses.field(default="lora", init=False)

    def __post_init__(self):
        require_pattern("targets", self.targets, "lora")
        require_count("rank", self.rank, "lora")
        require_positive("alpha", self.alpha, "lora")
        require_fraction("dropout", self.dropout, "lora")
        if not isinstance(self.rslora, (bool, np.bool_)):
            raise PeftConfigError(f"lora: rslora must be True or False, got {self.rslora!r}")
        check_in_axes(self.in_axes, "lora")

    @property
    def scaling(self) -> float:
        return self.alpha / (math.sqrt(self.rank) if self.rslora else self.rank)


# ----------------------------------------------------------------------------- dense updates
def lora_delta(node: dict, scaling: float) -> jax.Array:
    """The dense update s A B [in, out] of one LoRA node, in float32."""
    a, b = node["lora_a"].astype(jnp.float32), node["lora_b"].astype(jnp.float32)
    return scaling * jnp.matmul(a, b, precision=_HIGHEST)


def dense_as_lora(dw: jax.Array, rank: int) -> dict:
    """An exact LoRA node (scaling 1) for a dense delta: identity on the short side, zero-padded to `rank`."""
    d_in, d_out = dw.shape
    if d_in <= d_out:
        return {"lora_a": jnp.eye(d_in, rank, dtype=dw.dtype), "lora_b": jnp.pad(dw, ((0, rank - d_in), (0, 0)))}
    return {"lora_a": jnp.pad(dw, ((0, 0), (0, rank - d_out))), "lora_b": jnp.eye(rank, d_out, dtype=dw.dtype)}


def _exact(plan: Plan) -> bool:
    """Strategies that fold each input's scaling into an exact delta."""
    return plan.strategy in ("delta", "concat", "svd") or (
        plan.strategy in ("ties", "dare") and plan.opt("space") == "delta")


# ----------------------------------------------------------------------------- composition kernels
def _negate_b(plan, P, w, extras):
    # Only B carries the sign, so a lone module with weight -1 subtracts its update.
    return jax.tree_util.tree_map_with_path(
        lambda path, *xs: weighted_sum(jnp.abs(w) if tu.path_str(path).endswith("lora_a") else w, xs), *P)


def _paired_nodes(P) -> dict[str, list[dict]]:
    """{module path: [node of module i]} for the LoRA nodes {lora_a, lora_b} of each input."""
    flats = [FAMILY.nodes(p) for p in P]
    return {path: [f[path] for f in flats] for path in flats[0]}


def _delta(plan, P, w, extras):
    out = {}
    for path, nodes in _paired_nodes(P).items():
        dw = sum(w[i] * lora_delta(n, s) for i, (n, s) in enumerate(zip(nodes, plan.fact("scalings"))))
        out[path] = dense_as_lora(dw, plan.fact("rank"))
    return tu.unflatten(out)


def _concat_factors(nodes, w, scalings):
    """The exact concat form: A' [in, sum r], B' [sum r, out] with l_i s_i folded into B_i."""
    a = jnp.concatenate([n["lora_a"].astype(jnp.float32) for n in nodes], axis=1)
    b = jnp.concatenate([w[i] * s * n["lora_b"].astype(jnp.float32)
                         for i, (n, s) in enumerate(zip(nodes, scalings))], axis=0)
    return a, b


def _concat(plan, P, w, extras):
    return tu.unflatten({path: dict(zip(("lora_a", "lora_b"), _concat_factors(nodes, w, plan.fact("scalings"))))
                         for path, nodes in _paired_nodes(P).items()})


def _truncated_svd(a, b, rank):
    """Rank-`rank` factors of a @ b via QR of both factors and an SVD of the small core, plus energies."""
    qa, ra = jnp.linalg.qr(a)
    qb, rb = jnp.linalg.qr(b.T)
    u, s, vt = jnp.linalg.svd(jnp.matmul(ra, rb.T, precision=_HIGHEST), full_matrices=False)
    k = min(rank, s.shape[0])
    root = jnp.sqrt(s[:k])
    new_a = jnp.matmul(qa, u[:, :k], precision=_HIGHEST) * root
    new_b = root[:, None] * jnp.matmul(vt[:k], qb.T, precision=_HIGHEST)
    energy = (jnp.sum(s[k:] ** 2), jnp.sum(s**2))
    return jnp.pad(new_a, ((0, 0), (0, rank - k))), jnp.pad(new_b, ((0, rank - k), (0, 0))), energy


def _svd(plan, P, w, extras):
    out, aux = {}, {}
    for path, nodes in _paired_nodes(P).items():
        a, b, aux[path] = _truncated_svd(*_concat_factors(nodes, w, plan.fact("scalings")), plan.fact("rank"))
        out[path] = {"lora_a": a, "lora_b": b}
    return tu.unflatten(out), aux


def _svd_report(aux: dict, rank: int) -> dict:
    """Dropped energy of the truncation, per target and overall (lists along a weight grid)."""
    aux = jax.device_get(aux)
    ratio = lambda d, t: np.where(t > 0, d / np.where(t > 0, t, 1), 0.0).tolist()
    dropped = sum(np.asarray(d, np.float64) for d, _ in aux.values())
    total = sum(np.asarray(t, np.float64) for _, t in aux.values())
    return {"rank": rank, "dropped_energy": ratio(dropped, total),
            "dropped_energy_by_path": {p: ratio(np.asarray(d, np.float64), np.asarray(t, np.float64))
                                       for p, (d, t) in aux.items()}}


# ----------------------------------------------------------------------------- planning checks
def _check_ranks(modules) -> None:
    """Each module's factors have the rank its config states (concat and svd rely on it)."""
    for i, m in enumerate(modules):
        for path, node in FAMILY.nodes(m.params).items():
            if node["lora_a"].shape[1] != m.config.rank or node["lora_b"].shape[0] != m.config.rank:
                raise CompositionError(f"parameter {path!r} of modules[{i}] has rank {node['lora_a'].shape[1]} "
                                       f"but its config states rank {m.config.rank}")


def _check_scaling(modules, shared: bool, allow_mixed_scaling: bool, strategy: str, first_path: str) -> None:
    """Refuses mixed rsLoRA/plain scaling, and any difference in alpha / rank scaling when the result
    keeps one `shared` scaling (param, negate_b, ties/dare on the factors)."""
    c0 = modules[0].config
    for i, m in enumerate(modules[1:], 1):
        c = m.config
        if c.rslora != c0.rslora and not allow_mixed_scaling:
            kind = lambda cfg: "rsLoRA (alpha/sqrt(rank))" if cfg.rslora else "plain LoRA (alpha/rank)"
            raise CompositionError(
                f"mixed LoRA scalings at parameter {first_path!r}: modules[0] uses {kind(c0)}, modules[{i}] uses "
                f"{kind(c)}; an exact strategy (delta, concat, svd) folds each scaling in if you pass "
                "allow_mixed_scaling=True")
        if shared and not np.isclose(c.scaling, c0.scaling, rtol=1e-6, atol=0):
            raise CompositionError(
                f"strategy {strategy!r} sums the factors and keeps one scaling, but at parameter {first_path!r} "
                f"modules[0] has scaling {c0.scaling:g} (alpha {c0.alpha:g}, rank {c0.rank}) and modules[{i}] "
                f"{c.scaling:g} (alpha {c.alpha:g}, rank {c.rank}); use delta, concat or svd, which fold scalings")


def _result_rank(modules, plan: Plan) -> int:
    """The rank of the composed LoRA."""
    if plan.strategy == "concat":
        return sum(m.config.rank for m in modules)
    if plan.strategy == "svd":
        return plan.opt("rank") or max(m.config.rank for m in modules)
    if _exact(plan):  # dense delta: the largest min(in, out) among the targets
        return max(min(n["lora_a"].shape[0], n["lora_b"].shape[1]) for n in FAMILY.nodes(modules[0].params).values())
    return modules[0].config.rank


class LoraFamily(Family):
    """LoRA (Hu et al. 2021), with rsLoRA scaling and dropout on the LoRA input."""

    name = "lora"
    config_class = LoraConfig
    node_keys = frozenset({"lora_a"})
    mergeable = True
    kernel_view = True
    from_tree = True
    strategies = ("param", "negate_b", "delta", "concat", "svd", "ties", "dare", "stack")
    kernels = {"param": leafwise_sum, "negate_b": _negate_b, "delta": _delta, "concat": _concat, "svd": _svd}
    add_means = None
    add_refusal = " ('add' is ambiguous for LoRA: 'param' is the paper's, 'delta'/'concat' are exact)"
    scaled_leaves = frozenset({"lora_b"})
    hf_peft_type = "LORA"
    bench_noise = {"lora_b": 0.02}

    def init(self, model, config: LoraConfig, rng, params):
        targets = sites.match(sites.kernel_shapes(model), config.targets, "lora targets")
        out = {}
        for path, matrix in sites.matrices(model, config, targets).items():
            d_in, d_out = matrix.shape2d
            if config.rank > min(d_in, d_out):
                raise PeftConfigError(f"lora: rank {config.rank} is larger than the layer {path} ([{d_in}, {d_out}] "
                                      f"as a matrix): at most {min(d_in, d_out)}")
            bound = 1.0 / math.sqrt(d_in)  # Kaiming-uniform(a=sqrt(5)) bound, as in the reference LoRA
            a = jax.random.uniform(sites.site_key(rng, path), (d_in, config.rank), jnp.float32, -bound, bound)
            out[path] = {"lora_a": a, "lora_b": jnp.zeros((config.rank, d_out), jnp.float32)}
        return tu.unflatten(out)

    def update(self, x, view, ctx, name):
        if "lora_a" not in view.node:
            return None
        cfg = view.module.config
        a = view.node["lora_a"].astype(ctx.dtype)
        b = view.node["lora_b"].astype(ctx.dtype)
        x = ctx.dropout(x, cfg.dropout, name + "/lora")
        if view.batched:
            h = jnp.einsum("b...i,bir->b...r", x, a)
            return cfg.scaling * jnp.einsum("b...r,bro->b...o", h, b)
        return cfg.scaling * ((x @ a) @ b)

    def fold(self, w, node, config, sign):
        return w + sign * lora_delta(node, config.scaling)

    def matrix_shape(self, node, size):
        return node["lora_a"].shape[-2], node["lora_b"].shape[-1]

    def fit(self, path, node, shapes, config):
        a, b = node["lora_a"].shape, node["lora_b"].shape
        if a[-1] != b[-2]:
            return f"lora_a {tuple(a)} and lora_b {tuple(b)} disagree on the rank"
        return super().fit(path, node, shapes, config)

    def leaf_axes(self, name, kernel_spec):
        if kernel_spec is None or name not in ("lora_a", "lora_b"):
            return None
        return (kernel_spec.axes[0], None) if name == "lora_a" else (None, kernel_spec.axes[1])

    # ------------------------------------------------------------------ composition
    def strategy_options(self, strategy):
        exact = {"allow_mixed_scaling": False}
        return {"concat": exact, "delta": exact, "svd": {"rank": None, **exact},
                "ties": {"space": "delta", **exact}, "dare": {"space": "delta", **exact}}.get(strategy, {})

    def free_axes(self, plan):
        if not _exact(plan):
            return lambda path: set()
        # Exact strategies fold the factors into a delta, so the inputs' ranks may differ.
        return lambda path: {1} if path.endswith("lora_a") else {0}

    def shape_hint(self, plan):
        if _exact(plan):
            return ""
        return (f"; strategy {plan.strategy!r} sums A and B factor by factor and needs equal ranks: "
                "use concat, delta or svd for different ranks")

    def plan_facts(self, modules, plan, first_path):
        _check_ranks(modules)
        allow_mixed = dict(plan.options).get("allow_mixed_scaling", False)
        _check_scaling(modules, not _exact(plan), allow_mixed, plan.strategy, first_path)
        return {"scalings": tuple(float(m.config.scaling) for m in modules), "rank": _result_rank(modules, plan)}

    def to_taus(self, plan, P, extras):
        if not _exact(plan):
            return super().to_taus(plan, P, extras)
        return {path: jnp.stack([lora_delta(n, s) for n, s in zip(nodes, plan.fact("scalings"))])
                for path, nodes in _paired_nodes(P).items()}

    def from_taus(self, plan, merged, P, extras):
        if not _exact(plan):
            return super().from_taus(plan, merged, P, extras)
        return tu.unflatten({path: dense_as_lora(dw, plan.fact("rank")) for path, dw in merged.items()})

    def result_config(self, plan, configs, params):
        if not _exact(plan):
            return configs[0]
        rank = plan.fact("rank")  # the scalings are folded into the factors
        return dataclasses.replace(configs[0], rank=rank, alpha=float(rank), rslora=False)

    def composition_report(self, plan, aux):
        return {"svd": _svd_report(aux, plan.fact("rank"))} if aux else {}

    # ------------------------------------------------------------------ Hugging Face peft
    def hf_export(self, module, names):
        tensors, targets = {}, []
        for ours, node in self.nodes(module.params).items():
            if ours not in names:
                raise HFPeftError(f"LoRA on {ours} has no Hugging Face module name")
            name = names[ours]
            targets.append(name)
            tensors[f"base_model.model.{name}.lora_A.weight"] = np.asarray(node["lora_a"], np.float32).T.copy()
            tensors[f"base_model.model.{name}.lora_B.weight"] = np.asarray(node["lora_b"], np.float32).T.copy()
        c = module.config
        fields = {"r": c.rank, "lora_alpha": c.alpha, "use_rslora": c.rslora, "lora_dropout": c.dropout,
                  "target_modules": sorted(targets), "bias": "none", "fan_in_fan_out": False}
        return tensors, fields

    def hf_import(self, hf_config, tensors, reverse, config_path, weights_path):
        cfg = hf_config
        if cfg.get("rank_pattern") or cfg.get("alpha_pattern") or cfg.get("bias", "none") != "none":
            raise HFPeftError(f"{config_path}: rank_pattern / alpha_pattern / LoRA biases are not supported")
        flat = {}
        for name, tensor in tensors.items():
            module_name, kind = name.removeprefix("base_model.model.").rsplit(".lora_", 1)
            module_name = module_name.replace(".default", "")
            if module_name not in reverse:
                raise HFPeftError(f"{weights_path}: tensor {name!r} targets {module_name}, which this model does "
                                  "not have")
            key = "lora_a" if kind.startswith("A") else "lora_b"
            flat[f"{reverse[module_name]}/{key}"] = jnp.asarray(np.asarray(tensor, np.float32).T)
        targets = "|".join(sorted({k.rsplit("/", 1)[0] for k in flat}))
        config = LoraConfig(targets=f"({targets})", rank=int(cfg["r"]), alpha=float(cfg["lora_alpha"]),
                            rslora=bool(cfg.get("use_rslora", False)), dropout=float(cfg.get("lora_dropout", 0.0)))
        return tu.unflatten(flat), config


FAMILY = LoraFamily()
