"""Composition strategies: weighted sums of PEFT modules with explicit semantics.

  combine(modules, weights, strategy="param", **options) -> Module (a list of modules for "stack")
  combine_grid(modules, weights_grid [G, n], strategy, **options) -> batched Module, row g = weights_grid[g]

LoRA, with Phi_i = {A_i [in, r], B_i [r, out]} and delta W_i = s_i A_i B_i in our [in, out] kernel layout
(s_i = alpha/r, or alpha/sqrt(r) with rsLoRA):

  param     A' = sum l_i A_i, B' = sum l_i B_i. The paper's element-wise arithmetic; NOT the sum of the
            updates: cross terms B_i A_j appear, and l = -1 on a module flips both factors, so its product
            A B is *added back*, not subtracted. Needs equal ranks and equal scalings.
  negate_b  A' = sum |l_i| A_i, B' = sum l_i B_i (Zhang et al. 2023): a single module with l = -1 subtracts.
  delta     exact: dW' = sum l_i s_i A_i B_i, stored as a LoRA of rank R = max over targets of min(in, out)
            whose factors are an identity and the dense delta (scaling 1, zero-padded to R): models and
            `peft.merge` use it unchanged. Memory is that of the dense delta (x2 on the identity side).
  concat    exact and still low rank: A' = [A_1 ... A_n], B' = [l_1 s_1 B_1; ...; l_n s_n B_n], rank sum r_i.
  svd       the exact dW' truncated to `rank` (default: the largest input rank) by an SVD of the concat form
            (QR of both factors, SVD of the small core). Metadata records the dropped energy
            sum_{j>rank} sigma_j^2 / sum_j sigma_j^2, per target and overall.
  ties      TIES-merging (Yadav et al. 2023) on task vectors tau_i, per tensor: u_i = l_i tau_i; trim each u_i
            to its k = round(density * size) largest magnitudes; elect the sign of sum_i u_i; average the
            kept entries that agree with it (disjoint mean). `space="delta"` (default) works on dW_i and
            returns a dense delta as `delta` does; `space="param"` works on the factors A, B themselves.
  dare      DARE (Yu et al. 2023): each entry of each tau_i is dropped with probability `p` and the kept
            ones rescaled by 1/(1-p), then sum l_i tau_i. Masks come from `seed`, the target path and the
            module's position, so they are reproducible and the same for every point of a weight grid.
            `space` as for ties.

Other families (tau for ties/dare in brackets):
  ia3      param: l' = 1 + sum l_i (s_i - 1), relative to identity, so negation is 2 - s and weight 0 is
           the base model (raw sum l_i s_i, what HF peft does, doubles the scale for [1, 1]).  [tau = s - 1]
  prompt   param: sum l_i P_i (equal lengths); concat: [l_1 P_1; ...; l_n P_n]. A prompt of zeros still
           adds positions, so weight 0 does NOT give the base model for prompts.
  sparse   param: exact sum over the union of indices (indices stay sorted and unique).  [tau on the union]
  adapter  param: sum of all adapter parameters (cross terms through the non-linearity).  [tau = params]
  any      stack: the list [scaled(m_1, l_1), ...] for the model to apply together, in order (MAD-X for
           adapters: language adapter, then task adapter). scaled() is exact per family: LoRA B * l, (IA)^3
           1 + l (s - 1), adapter up-projection and bias * l, sparse values * l, prompt l P. Families may mix.

"add" is accepted for "param" except for LoRA, where it would hide the choice between param and delta.

Composition runs jitted: leaf-wise strategies (param, negate_b, ia3, adapters, prompts) are tree maps that
keep the inputs' sharding and move no data between devices; weights are traced arguments, so a new
weight never re-traces, and `combine_grid` vmaps one trace over a grid of weights. Refusals (see
`checks`) name the module and parameter path. Every result records its provenance in its metadata
under "composition": input fingerprints, weights, strategy, options, and the shared base fingerprint.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import zlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from peft_jax import tree as tu
from peft_jax.compose import checks
from peft_jax.compose.checks import CompositionError
from peft_jax.peft.module import Module

_HIGHEST = jax.lax.Precision.HIGHEST

STRATEGIES = {
    "lora": ("param", "negate_b", "delta", "concat", "svd", "ties", "dare", "stack"),
    "ia3": ("param", "ties", "dare", "stack"),
    "prompt": ("param", "concat", "stack"),
    "sparse": ("param", "ties", "dare", "stack"),
    "adapter": ("param", "ties", "dare", "stack"),
}

# Options of each strategy and their defaults; LoRA-only ones are dropped for other families.
_OPTIONS = {
    "param": {}, "negate_b": {}, "stack": {}, "concat": {"allow_mixed_scaling": False},
    "delta": {"allow_mixed_scaling": False},
    "svd": {"rank": None, "allow_mixed_scaling": False},
    "ties": {"density": 0.2, "space": "delta", "allow_mixed_scaling": False},
    "dare": {"p": 0.5, "seed": 0, "space": "delta", "allow_mixed_scaling": False},
}
_LORA_ONLY = ("space", "allow_mixed_scaling", "rank")


@dataclasses.dataclass(frozen=True)
class Plan:
    """Everything static about one composition (hashable: the jit cache key besides shapes)."""

    family: str
    strategy: str
    scalings: tuple[float, ...] = ()
    rank: int = 0
    options: tuple[tuple[str, Any], ...] = ()

    def opt(self, name: str):
        return dict(self.options)[name]

    @property
    def exact_lora(self) -> bool:
        """LoRA strategies that fold each input's scaling into an exact delta."""
        return self.family == "lora" and (self.strategy in ("delta", "concat", "svd") or (
            self.strategy in ("ties", "dare") and self.opt("space") == "delta"))


# ----------------------------------------------------------------------------- small pure helpers
def _wsum(w: jax.Array, xs) -> jax.Array:
    """sum_i w_i x_i in the leaves' dtype."""
    out = sum(w[i] * x.astype(jnp.float32) for i, x in enumerate(xs))
    return out.astype(xs[0].dtype)


def _is_lora_node(x) -> bool:
    return isinstance(x, dict) and "lora_a" in x


def _lora_nodes(params_list) -> dict[str, list[dict]]:
    """{module path: [node of module i]} for the LoRA nodes {lora_a, lora_b}."""
    flats = [tu.flatten(p, is_leaf=_is_lora_node) for p in params_list]
    return {path: [f[path] for f in flats] for path in flats[0]}


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


def trim_top_k(x: jax.Array, k: int) -> jax.Array:
    """x with all but its k largest-magnitude entries set to 0 (ties broken by position, exactly k kept)."""
    flat = x.reshape(-1)
    order = jnp.argsort(-jnp.abs(flat), stable=True)
    keep = jnp.zeros(flat.shape, bool).at[order[:k]].set(True)
    return jnp.where(keep, flat, 0).reshape(x.shape)


def ties_merge(taus: jax.Array, w: jax.Array, density: float) -> jax.Array:
    """TIES on stacked task vectors taus [n, ...]: weight, trim (per vector), elect sign, disjoint mean."""
    u = w.reshape((-1,) + (1,) * (taus.ndim - 1)) * taus
    k = max(1, int(round(density * int(np.prod(taus.shape[1:])))))
    trimmed = jax.vmap(trim_top_k, in_axes=(0, None))(u, k)
    sign = jnp.sign(trimmed.sum(0))
    agree = (jnp.sign(trimmed) == sign) & (trimmed != 0)
    count = agree.sum(0)
    # Entries whose elected sign no kept value supports are 0, not 0/0.
    return jnp.where(count > 0, jnp.where(agree, trimmed, 0).sum(0) / jnp.maximum(count, 1), 0.0)


def dare_merge(taus: jax.Array, w: jax.Array, p: float, keys: jax.Array) -> jax.Array:
    """DARE on stacked task vectors taus [n, ...]: drop with probability p, rescale by 1/(1-p), weighted sum."""
    def drop(tau, key):
        keep = jax.random.bernoulli(key, 1.0 - p, tau.shape)
        return jnp.where(keep, tau / (1.0 - p), 0.0)
    return jnp.tensordot(w, jax.vmap(drop)(taus, keys), axes=1)


def dare_keys(seed: int, path: str, n: int) -> jax.Array:
    """One key per module for the tensor at `path`: fixed by seed, path and position."""
    base = jax.random.fold_in(jax.random.key(seed), zlib.crc32(path.encode()) & 0x7FFFFFFF)
    return jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.arange(n))


# ----------------------------------------------------------------------------- LoRA kernels
def _lora_param(plan, P, w, extras):
    if plan.strategy == "param":
        return jax.tree.map(lambda *xs: _wsum(w, xs), *P)
    # negate_b: only B carries the sign, so a lone module with weight -1 subtracts its update.
    return jax.tree_util.tree_map_with_path(
        lambda path, *xs: _wsum(jnp.abs(w) if tu.path_str(path).endswith("lora_a") else w, xs), *P)


def _lora_delta(plan, P, w, extras):
    out = {}
    for path, nodes in _lora_nodes(P).items():
        dw = sum(w[i] * lora_delta(n, s) for i, (n, s) in enumerate(zip(nodes, plan.scalings)))
        out[path] = dense_as_lora(dw, plan.rank)
    return tu.unflatten(out)


def _concat_factors(nodes, w, scalings):
    """The exact concat form: A' [in, sum r], B' [sum r, out] with l_i s_i folded into B_i."""
    a = jnp.concatenate([n["lora_a"].astype(jnp.float32) for n in nodes], axis=1)
    b = jnp.concatenate([w[i] * s * n["lora_b"].astype(jnp.float32)
                         for i, (n, s) in enumerate(zip(nodes, scalings))], axis=0)
    return a, b


def _lora_concat(plan, P, w, extras):
    return tu.unflatten({path: dict(zip(("lora_a", "lora_b"), _concat_factors(nodes, w, plan.scalings)))
                         for path, nodes in _lora_nodes(P).items()})


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


def _lora_svd(plan, P, w, extras):
    out, aux = {}, {}
    for path, nodes in _lora_nodes(P).items():
        a, b, aux[path] = _truncated_svd(*_concat_factors(nodes, w, plan.scalings), plan.rank)
        out[path] = {"lora_a": a, "lora_b": b}
    return tu.unflatten(out), aux


# ----------------------------------------------------------------------------- other families
def _ia3_param(plan, P, w, extras):
    # sum l_i s_i + (1 - sum l_i) == 1 + sum l_i (s_i - 1), written so that weights [1] return s bit for bit.
    return jax.tree.map(lambda *xs: _wsum(w, xs) + (1.0 - jnp.sum(w)).astype(xs[0].dtype), *P)


def _leafwise_param(plan, P, w, extras):
    return jax.tree.map(lambda *xs: _wsum(w, xs), *P)


def _prompt_concat(plan, P, w, extras):
    parts = [w[i] * p["prompt"]["embedding"].astype(jnp.float32) for i, p in enumerate(P)]
    return {"prompt": {"embedding": jnp.concatenate(parts, axis=0).astype(P[0]["prompt"]["embedding"].dtype)}}


def _sparse_param(plan, P, w, extras):
    out = {}
    for path, (union, positions) in extras.items():
        values = [tu.flatten(p)[path + "/values"] for p in P]
        acc = jnp.zeros(union.shape, jnp.float32)
        for i, (pos, v) in enumerate(zip(positions, values)):
            acc = acc.at[pos].add(w[i] * v.astype(jnp.float32))
        out[path] = {"indices": union, "values": acc.astype(values[0].dtype)}
    return tu.unflatten(out)


# ----------------------------------------------------------------------------- task vectors (ties / dare)
def _to_taus(plan, P, extras) -> dict[str, jax.Array]:
    """{path: stacked task vectors [n, ...]} in the space the plan merges in."""
    if plan.exact_lora:
        return {path: jnp.stack([lora_delta(n, s) for n, s in zip(nodes, plan.scalings)])
                for path, nodes in _lora_nodes(P).items()}
    if plan.family == "sparse":
        taus = {}
        for path, (union, positions) in extras.items():
            vals = [tu.flatten(p)[path + "/values"].astype(jnp.float32) for p in P]
            taus[path] = jnp.stack([jnp.zeros(union.shape, jnp.float32).at[pos].set(v)
                                    for pos, v in zip(positions, vals)])
        return taus
    flats = [tu.flatten(p) for p in P]
    shift = 1.0 if plan.family == "ia3" else 0.0  # (IA)^3 vectors are relative to the identity scale
    return {path: jnp.stack([f[path].astype(jnp.float32) - shift for f in flats]) for path in flats[0]}


def _from_taus(plan, merged, P, extras) -> dict:
    """Inverse of `_to_taus` for the merged vectors."""
    if plan.exact_lora:
        return tu.unflatten({path: dense_as_lora(dw, plan.rank) for path, dw in merged.items()})
    if plan.family == "sparse":
        return tu.unflatten({path: {"indices": extras[path][0], "values": v} for path, v in merged.items()})
    flat0 = tu.flatten(P[0])
    shift = 1.0 if plan.family == "ia3" else 0.0
    return tu.unflatten({path: (v + shift).astype(flat0[path].dtype) for path, v in merged.items()})


def _ties(plan, P, w, extras):
    taus = _to_taus(plan, P, extras)
    return _from_taus(plan, {p: ties_merge(t, w, plan.opt("density")) for p, t in taus.items()}, P, extras)


def _dare(plan, P, w, extras):
    taus = _to_taus(plan, P, extras)
    merged = {p: dare_merge(t, w, plan.opt("p"), dare_keys(plan.opt("seed"), p, len(P))) for p, t in taus.items()}
    return _from_taus(plan, merged, P, extras)


_KERNELS = {
    ("lora", "param"): _lora_param, ("lora", "negate_b"): _lora_param, ("lora", "delta"): _lora_delta,
    ("lora", "concat"): _lora_concat, ("lora", "svd"): _lora_svd,
    ("ia3", "param"): _ia3_param, ("adapter", "param"): _leafwise_param, ("prompt", "param"): _leafwise_param,
    ("prompt", "concat"): _prompt_concat, ("sparse", "param"): _sparse_param,
}


def _run(params_list, w, extras, *, plan: Plan):
    """(composed params, aux) for one weight vector; aux holds per-target SVD energies."""
    if plan.strategy in ("ties", "dare"):
        return (_ties if plan.strategy == "ties" else _dare)(plan, params_list, w, extras), {}
    out = _KERNELS[(plan.family, plan.strategy)](plan, params_list, w, extras)
    return out if isinstance(out, tuple) else (out, {})


_compose = jax.jit(_run, static_argnames="plan")


@functools.partial(jax.jit, static_argnames="plan")
def _compose_grid(params_list, weights_grid, extras, *, plan: Plan):
    return jax.vmap(lambda w: _run(params_list, w, extras, plan=plan))(weights_grid)


# ----------------------------------------------------------------------------- planning and checks
def _resolve_strategy(family: str, strategy: str) -> str:
    if strategy == "add" and family != "lora":
        strategy = "param"
    if strategy not in STRATEGIES[family]:
        extra = " ('add' is ambiguous for LoRA: 'param' is the paper's, 'delta'/'concat' are exact)" \
            if strategy == "add" else ""
        raise CompositionError(f"strategy {strategy!r} is not defined for {family} modules; "
                               f"choose one of {STRATEGIES[family]}{extra}")
    return strategy


def _resolve_options(family: str, strategy: str, options: dict) -> dict:
    """The strategy's options with defaults filled in; unknown names and bad values are refused."""
    defaults = {k: v for k, v in _OPTIONS[strategy].items() if family == "lora" or k not in _LORA_ONLY}
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise CompositionError(f"unknown option(s) {unknown} for strategy {strategy!r} on {family} modules; "
                               f"accepted: {sorted(defaults) or 'none'}")
    opts = {**defaults, **options}
    bad = {"density": lambda v: not 0.0 < v <= 1.0, "p": lambda v: not 0.0 <= v < 1.0,
           "space": lambda v: v not in ("delta", "param"), "seed": lambda v: not isinstance(v, int),
           "rank": lambda v: v is not None and (not isinstance(v, int) or v < 1)}
    for name, value in opts.items():
        if name in bad and bad[name](value):
            raise CompositionError(f"option {name}={value!r} is out of range for strategy {strategy!r} "
                                   "(density in (0, 1], p in [0, 1), space delta|param, integer seed, rank >= 1)")
    return opts


def _free_axes(family: str, strategy: str, shared_rank: bool):
    """Which axes of each leaf may differ between inputs under this strategy."""
    def free(path: str) -> set[int]:
        if family == "sparse":
            return {0}  # each module has its own number of entries; they are merged over the union
        if family == "prompt" and strategy == "concat":
            return {0}
        if family == "lora" and not shared_rank:
            return {1} if path.endswith("lora_a") else {0}
        return set()
    return free


def _check_lora_ranks(modules: list[Module]) -> None:
    """Each module's factors have the rank its config states (concat and svd rely on it)."""
    for i, m in enumerate(modules):
        for path, node in tu.flatten(m.params, is_leaf=_is_lora_node).items():
            if node["lora_a"].shape[1] != m.config.rank or node["lora_b"].shape[0] != m.config.rank:
                raise CompositionError(f"parameter {path!r} of modules[{i}] has rank {node['lora_a'].shape[1]} "
                                       f"but its config states rank {m.config.rank}")


def _lora_rank(modules, strategy, opts, exact) -> int:
    """The rank of the composed LoRA."""
    if strategy == "concat":
        return sum(m.config.rank for m in modules)
    if strategy == "svd":
        return opts["rank"] or max(m.config.rank for m in modules)
    if exact:  # dense delta: the largest min(in, out) among the targets
        return max(min(n["lora_a"].shape[0], n["lora_b"].shape[1])
                   for n in tu.flatten(modules[0].params, is_leaf=_is_lora_node).values())
    return modules[0].config.rank


def _sparse_union(modules: list[Module]) -> dict:
    """{leaf path: (sorted unique union of indices, [positions of module i's entries in it])}, on the host."""
    nodes = [tu.flatten(m.params, is_leaf=lambda x: isinstance(x, dict) and "indices" in x) for m in modules]
    extras = {}
    for path in nodes[0]:
        leaves = [n[path]["indices"] for n in nodes]
        if not all(checks.is_concrete(x) for x in leaves):
            raise CompositionError(f"sparse parameter {path!r}: composing sparse modules needs concrete indices "
                                   "(the union's size depends on them); call combine outside jit")
        idx = [np.asarray(jax.device_get(x)).astype(np.int64) for x in leaves]
        union = np.unique(np.concatenate(idx))
        extras[path] = (jnp.asarray(union, jnp.int32),
                        [jnp.asarray(np.searchsorted(union, i), jnp.int32) for i in idx])
    return extras


def _plan(modules: list[Module], strategy: str, options: dict) -> tuple[Plan, dict]:
    """Checks that the modules compose under `strategy` and returns the static plan plus host-made extras."""
    family = modules[0].family
    strategy = _resolve_strategy(family, strategy)
    opts = _resolve_options(family, strategy, options)
    paths = checks.check_structure(modules)
    plan = Plan(family, strategy, options=tuple(sorted(opts.items())))
    shared = family == "lora" and not plan.exact_lora
    hint = (f"; strategy {strategy!r} sums A and B factor by factor and needs equal ranks: "
            "use concat, delta or svd for different ranks") if shared else ""
    checks.check_shapes(modules, _free_axes(family, strategy, shared), hint)
    if family == "lora":
        _check_lora_ranks(modules)
        checks.check_lora_scaling(modules, shared, opts.get("allow_mixed_scaling", False), strategy, paths[0])
        plan = dataclasses.replace(plan, scalings=tuple(float(m.config.scaling) for m in modules),
                                   rank=_lora_rank(modules, strategy, opts, plan.exact_lora))
    if family == "adapter":
        acts = [m.config.activation for m in modules]
        if len(set(acts)) > 1:
            raise CompositionError(f"adapters with different activations {acts} at parameter {paths[0]!r}: "
                                   "their parameter sum has no meaning; use strategy 'stack'")
    return plan, (_sparse_union(modules) if family == "sparse" else {})


# ----------------------------------------------------------------------------- provenance
def _recorded_weights(weights):
    """The weights as given (float64 lists), or None when they are traced."""
    if not all(checks.is_concrete(x) for x in jax.tree.leaves(weights)):
        return None
    return np.asarray(jax.device_get(weights), np.float64).tolist()


def _provenance(modules, weights, strategy: str, options: dict, base: str | None) -> dict:
    """The 'composition' record: inputs (fingerprints), weights, strategy, options, base fingerprint."""
    concrete = all(checks.is_concrete(x) for m in modules for x in jax.tree.leaves(m.params))
    inputs = [checks.input_record(m) if concrete else {"fingerprint": None, "family": m.family} for m in modules]
    weights = _recorded_weights(weights)
    return {"strategy": strategy, "weights": weights, "options": options, "inputs": inputs,
            "base_fingerprint": base}


def _svd_report(aux: dict, rank: int) -> dict:
    """Dropped energy of the truncation, per target and overall (lists along a weight grid)."""
    aux = jax.device_get(aux)
    ratio = lambda d, t: np.where(t > 0, d / np.where(t > 0, t, 1), 0.0).tolist()
    dropped = sum(np.asarray(d, np.float64) for d, _ in aux.values())
    total = sum(np.asarray(t, np.float64) for _, t in aux.values())
    return {"rank": rank, "dropped_energy": ratio(dropped, total),
            "dropped_energy_by_path": {p: ratio(np.asarray(d, np.float64), np.asarray(t, np.float64))
                                       for p, (d, t) in aux.items()}}


def _result_config(plan: Plan, modules: list[Module], params: dict):
    c0 = modules[0].config
    if plan.exact_lora:  # scalings are folded into the factors
        return dataclasses.replace(c0, rank=plan.rank, alpha=float(plan.rank), rslora=False)
    if plan.family == "prompt" and plan.strategy == "concat":
        return dataclasses.replace(c0, length=int(params["prompt"]["embedding"].shape[-2]))
    return c0


def _finish(modules, plan: Plan, params, aux, weights, base, batched: bool) -> Module:
    record = _provenance(modules, weights, plan.strategy, dict(plan.options), base)
    if aux and all(checks.is_concrete(x) for x in jax.tree.leaves(aux)):
        record["svd"] = _svd_report(aux, plan.rank)
    meta = {"composition": record, **({"base_fingerprint": base} if base else {})}
    return Module(params=params, config=_result_config(plan, modules, params), batched=batched,
                  metadata_json=json.dumps(meta, sort_keys=True))


# ----------------------------------------------------------------------------- stacking
@functools.partial(jax.jit, static_argnames="family")
def _scaled(params: dict, lam: jax.Array, *, family: str) -> dict:
    """One module scaled by lam exactly, per family (see the module docstring)."""
    scaled_leaves = {"lora": ("lora_b",), "adapter": ("up", "up_bias"), "sparse": ("values",),
                     "prompt": ("embedding",), "ia3": ("ia3_in", "ia3_out")}[family]

    def scale(path, x):
        name = tu.path_str(path).rsplit("/", 1)[-1]
        if name not in scaled_leaves:
            return x
        y = lam * x.astype(jnp.float32) + ((1.0 - lam) if family == "ia3" else 0.0)
        return y.astype(x.dtype)
    return jax.tree_util.tree_map_with_path(scale, params)


def _stack(modules: list[Module], w: jax.Array, weights, base: str | None, options: dict) -> list[Module]:
    if options:
        raise CompositionError(f"strategy 'stack' takes no options, got {sorted(options)}")
    out = []
    for i, m in enumerate(modules):
        record = {**_provenance(modules, weights, "stack", {}, base), "position": i}
        meta = {"composition": record, **({"base_fingerprint": base} if base else {})}
        out.append(Module(params=_scaled(m.params, w[i], family=m.family), config=m.config,
                          metadata_json=json.dumps(meta, sort_keys=True)))
    return out


# ----------------------------------------------------------------------------- public API
def _checked(modules, weights, strategy: str, grid: bool):
    """Shared refusals: module list, weight count, one base, finite values."""
    modules = checks.check_modules(modules, mixed_families_ok=strategy == "stack" and not grid)
    w = checks.check_weights(weights, len(modules), grid=grid)
    base = checks.check_base(modules)
    checks.check_finite(modules)
    return modules, w, base


def combine(modules, weights, strategy: str = "param", **options) -> Module | list[Module]:
    """The weighted composition sum_i weights[i] * modules[i] under `strategy` (see the module docstring).

    Args:
      modules: PEFT modules of one family trained on one base (any families for "stack").
      weights: one float per module.
      strategy: lora: param | negate_b | delta | concat | svd | ties | dare; ia3, adapter: param | ties |
        dare; prompt: param | concat; sparse: param | ties | dare; any family: stack.
      **options: svd: rank; ties: density, space; dare: p, seed, space; exact LoRA strategies:
        allow_mixed_scaling (fold rsLoRA and plain scalings together).

    Returns:
      A module of the inputs' family with its provenance under metadata["composition"]; for "stack",
      the list of scaled modules to pass to the model together (`model.logits(..., peft=[...])`).

    Raises:
      CompositionError: modules or weights that cannot be composed; the message names module and path.
    """
    modules, w, base = _checked(modules, weights, strategy, grid=False)
    if strategy == "stack":
        return _stack(modules, w, weights, base, options)
    plan, extras = _plan(modules, strategy, options)
    params, aux = _compose([m.params for m in modules], w, extras, plan=plan)
    return _finish(modules, plan, params, aux, weights, base, batched=False)


def combine_grid(modules, weights_grid, strategy: str = "param", **options) -> Module:
    """`combine` at every row of weights_grid [G, n] at once (one trace, vmapped over the rows).

    The result is a batched module: leaf g is the composition with weights_grid[g], so with G equal to
    the batch size it is used directly as per-example modules (`model.logits(params, batch, peft=grid)`);
    `peft.unbatch` splits it. Sparse modules and "stack" have no batched form and are refused.
    """
    modules, w, base = _checked(modules, weights_grid, strategy, grid=True)
    if strategy == "stack" or modules[0].family == "sparse":
        raise CompositionError("combine_grid cannot batch sparse modules or 'stack' results "
                               "(the models apply neither per example); call combine per weight instead")
    plan, extras = _plan(modules, strategy, options)
    params, aux = _compose_grid([m.params for m in modules], w, extras, plan=plan)
    return _finish(modules, plan, params, aux, weights_grid, base, batched=True)
