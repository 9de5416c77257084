"""Composition algebra: identities against float64 NumPy, TIES/DARE by hand, refusals, provenance, jit."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from peft_jax import compose, peft
from peft_jax import tree as tu
from peft_jax.compose import algebra
from peft_jax.compose.checks import CompositionError
from peft_jax.models import get_model
from peft_jax.peft.module import AdapterConfig, IA3Config, LoraConfig, Module, PromptConfig, SparseConfig

REPO = pathlib.Path(__file__).resolve().parents[1]
SHAPES = {"encoder/layers_0/attention/query": (6, 5), "encoder/layers_0/mlp/wo": (7, 4)}
REL = 1e-6  # float32 composition against a float64 reference


def lora(seed, rank=3, alpha=6.0, rslora=False, base="base0", shapes=SHAPES):
    rng = np.random.default_rng(seed)
    flat = {p: {"lora_a": jnp.asarray(rng.normal(size=(i, rank)), jnp.float32),
                "lora_b": jnp.asarray(rng.normal(size=(rank, o)), jnp.float32)} for p, (i, o) in shapes.items()}
    return Module(params=tu.unflatten(flat), config=LoraConfig(rank=rank, alpha=alpha, rslora=rslora),
                  metadata_json=json.dumps({"base_fingerprint": base}))


def ia3(values):
    params = {"layers_0": {"mlp": {"wo": {"ia3_in": jnp.asarray(values, jnp.float32)}}}}
    return Module(params=params, config=IA3Config())


def nodes(module):
    return tu.flatten(module.params, is_leaf=lambda x: isinstance(x, dict) and "lora_a" in x)


def delta64(module):
    """{path: s * A @ B} in float64: the update a LoRA module makes."""
    s = module.config.scaling
    return {p: s * np.asarray(n["lora_a"], np.float64) @ np.asarray(n["lora_b"], np.float64)
            for p, n in nodes(module).items()}


def same_leaves(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)))


def rel_err(x, ref):
    return np.linalg.norm(x - ref) / np.linalg.norm(ref)


class _Tiny(dict):
    """name -> (model, base params) of one-layer tiny presets, built on first use (the algebra is per layer)."""

    def __missing__(self, name):
        model = get_model(name, num_layers=1, **({"num_decoder_layers": 1} if name == "mt5_tiny" else {}))
        self[name] = (model, model.init(jax.random.key(0)))
        return self[name]


@pytest.fixture(scope="module")
def tiny():
    return _Tiny()


def perturb(module, seed, scale=0.05):
    """module with Gaussian noise added to every float leaf (NumPy noise: no per-shape compiles)."""
    rng = np.random.default_rng(seed)
    return module.replace(params=jax.tree.map(
        lambda x: x if x.dtype == jnp.int32 else x + scale * rng.normal(size=x.shape).astype(np.float32),
        module.params))


# ------------------------------------------------------------------------------------------ LoRA identities
@pytest.mark.parametrize("strategy", ["delta", "concat"])
def test_exact_strategies_equal_weighted_sum_of_updates(strategy):
    mods = [lora(1, rank=3, alpha=6.0), lora(2, rank=2, alpha=3.0), lora(3, rank=4, alpha=4.0)]
    lams = [0.7, -1.3, 0.4]
    out = compose.combine(mods, lams, strategy)
    got = delta64(out)
    for path in SHAPES:
        ref = sum(lam * delta64(m)[path] for lam, m in zip(lams, mods))
        assert rel_err(got[path], ref) <= REL, (strategy, path, rel_err(got[path], ref))
    if strategy == "concat":
        assert out.config.rank == 9 and out.config.scaling == 1.0


def test_param_is_per_factor_weighted_sum():
    m1, m2 = lora(1), lora(2)
    for strategy, a_w in [("param", [0.5, -2.0]), ("negate_b", [0.5, 2.0])]:
        out = compose.combine([m1, m2], [0.5, -2.0], strategy)
        for p, n in nodes(out).items():
            n1, n2 = nodes(m1)[p], nodes(m2)[p]
            ref_a = a_w[0] * np.asarray(n1["lora_a"], np.float64) + a_w[1] * np.asarray(n2["lora_a"], np.float64)
            ref_b = 0.5 * np.asarray(n1["lora_b"], np.float64) - 2.0 * np.asarray(n2["lora_b"], np.float64)
            assert rel_err(np.asarray(n["lora_a"]), ref_a) <= REL and rel_err(np.asarray(n["lora_b"]), ref_b) <= REL
        assert out.config == m1.config


def test_param_negation_adds_the_module_back_cross_terms():
    # The paper's element-wise arithmetic is not a sum of updates: with lam = -1 both factors flip, so
    # (-A)(-B) = +AB, and task - lang under param = dW_t + dW_l - s (A_t B_l + A_l B_t).
    task, lang = lora(1), lora(2)
    s = task.config.scaling
    alone = delta64(compose.combine([lang], [-1.0], "param"))
    negated = delta64(compose.combine([lang], [-1.0], "negate_b"))
    diff = delta64(compose.combine([task, lang], [1.0, -1.0], "param"))
    for p in SHAPES:
        assert rel_err(alone[p], delta64(lang)[p]) <= REL  # not subtracted: added back
        assert rel_err(negated[p], -delta64(lang)[p]) <= REL  # negate_b subtracts a lone module
        a_t, b_t = (np.asarray(nodes(task)[p][k], np.float64) for k in ("lora_a", "lora_b"))
        a_l, b_l = (np.asarray(nodes(lang)[p][k], np.float64) for k in ("lora_a", "lora_b"))
        ref = delta64(task)[p] + delta64(lang)[p] - s * (a_t @ b_l + a_l @ b_t)
        assert rel_err(diff[p], ref) <= REL
        assert rel_err(diff[p], delta64(task)[p] - delta64(lang)[p]) > 0.1


@pytest.mark.parametrize("strategy", ["param", "negate_b", "delta", "concat", "svd", "ties", "dare"])
def test_zero_weights_leave_the_base_unchanged(strategy, tiny):
    model, params = tiny["palm_tiny"]
    m1 = peft.init(model, LoraConfig(rank=2), jax.random.key(1))
    m1 = perturb(m1, 1, 0.5)
    merged = peft.merge(params, compose.combine([m1, m1], [0.0, 0.0], strategy))
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(merged), jax.tree.leaves(params)))


def test_zero_weight_adapter_and_ia3_give_base_logits(tiny):
    model, params = tiny["mt5_tiny"]
    batch = {"encoder_input_tokens": jnp.array([[5, 6, 7, 1]]), "decoder_input_tokens": jnp.array([[0, 5, 6, 7]])}
    base = model.logits(params, batch)
    adapter = perturb(peft.init(model, AdapterConfig(placement="houlsby"), jax.random.key(1)), 1, 0.3)
    scales = perturb(peft.init(model, IA3Config(), jax.random.key(2)), 2, 0.3)
    zero = [compose.combine([adapter], [0.0]), compose.combine([scales, scales], [0.0, 0.0])]
    np.testing.assert_array_equal(model.logits(params, batch, peft=zero), base)


@pytest.mark.parametrize("family_module", ["lora", "ia3", "adapter", "prompt", "sparse"])
def test_single_module_at_weight_one_is_itself(family_module, tiny):
    model, _ = tiny["mt5_tiny"]
    few = r"encoder/layers_0/(attention/query|mlp/wo)"
    config = {"lora": LoraConfig(targets=few, rank=2), "ia3": IA3Config(), "adapter": AdapterConfig(),
              "prompt": PromptConfig(length=3, init="random"),
              "sparse": SparseConfig(targets=few + "/kernel", density=0.01)}[family_module]
    m = peft.init(model, config, jax.random.key(3))
    m = perturb(m, 3, 0.5)
    strategies = [s for s in compose.STRATEGIES[family_module] if s not in ("delta", "concat", "svd")]
    for strategy in strategies:
        opts = {"ties": {"density": 1.0}, "dare": {"p": 0.0}}.get(strategy, {})
        if family_module == "lora" and strategy in ("ties", "dare"):
            opts["space"] = "param"  # on the factors: the same rank-2 module comes back
        out = compose.combine([m], [1.0], strategy, **opts)
        out = out[0] if strategy == "stack" else out
        assert out.config == m.config, strategy
        for a, b in zip(jax.tree.leaves(out.params), jax.tree.leaves(m.params)):
            np.testing.assert_array_equal(a, b, err_msg=strategy)


def test_exact_lora_strategies_at_weight_one_keep_the_update():
    m = lora(4)
    for strategy in ("delta", "concat", "svd"):
        got = delta64(compose.combine([m], [1.0], strategy))
        for p in SHAPES:
            assert rel_err(got[p], delta64(m)[p]) <= (1e-5 if strategy == "svd" else REL), strategy


def test_svd_full_rank_equals_delta_and_truncation_is_optimal():
    mods, lams = [lora(1, rank=3), lora(2, rank=2, alpha=3.0)], [1.0, -0.6]
    exact = delta64(compose.combine(mods, lams, "delta"))
    full = compose.combine(mods, lams, "svd", rank=5)
    assert full.metadata["composition"]["svd"]["dropped_energy"] < 1e-10
    for p in SHAPES:
        assert rel_err(delta64(full)[p], exact[p]) <= 1e-5  # float32 QR + SVD
    cut = compose.combine(mods, lams, "svd", rank=2)
    report = cut.metadata["composition"]["svd"]
    dropped, total = 0.0, 0.0
    for p in SHAPES:
        u, s, vt = np.linalg.svd(exact[p])
        best = (u[:, :2] * s[:2]) @ vt[:2]  # Eckart-Young: the best rank-2 approximation
        assert rel_err(delta64(cut)[p], best) <= 1e-4
        assert report["dropped_energy_by_path"][p] == pytest.approx(np.sum(s[2:] ** 2) / np.sum(s**2), rel=1e-4)
        dropped, total = dropped + np.sum(s[2:] ** 2), total + np.sum(s**2)
    assert report["dropped_energy"] == pytest.approx(dropped / total, rel=1e-4) and report["rank"] == 2


@pytest.mark.parametrize("model_name", ["mt5_tiny", "palm_tiny"])
def test_delta_composed_logits_equal_both_modules_active(model_name, tiny):
    model, params = tiny[model_name]
    targets = r".*(attention/(query|key|value|out)|mlp/(wi_0|wo))$"
    m1 = peft.init(model, LoraConfig(targets=targets, rank=4, alpha=8.0), jax.random.key(1))
    m2 = peft.init(model, LoraConfig(targets=targets, rank=2, alpha=2.0), jax.random.key(2))
    m1, m2 = perturb(m1, 7), perturb(m2, 8)
    tokens = jnp.array([[5, 9, 17, 3, 1], [7, 7, 2, 1, 0]])
    batch = {"decoder_input_tokens": tokens}
    if model.family == "encoder_decoder":
        batch = {"encoder_input_tokens": tokens, "decoder_input_tokens": jnp.array([[0, 5, 6, 7], [0, 8, 9, 9]])}
    logits = jax.jit(model.logits)  # one compile per module structure beats op-by-op dispatch
    both = logits(params, batch, [m1, m2])
    assert float(jnp.max(jnp.abs(both - logits(params, batch)))) > 1e-2  # the modules matter
    for strategy in ("delta", "concat"):
        np.testing.assert_allclose(logits(params, batch, compose.combine([m1, m2], [1, 1], strategy)),
                                   both, rtol=1e-5, atol=1e-5, err_msg=strategy)


# ------------------------------------------------------------------------------------------ other families
def test_ia3_composes_relative_to_identity():
    l1, l2 = np.array([1.5, 0.5, 1.0, 2.0]), np.array([0.8, 1.2, 1.0, 3.0])
    neg = compose.combine([ia3(l1)], [-1.0])
    np.testing.assert_allclose(neg.params["layers_0"]["mlp"]["wo"]["ia3_in"], 2 - l1, rtol=1e-7)
    both = compose.combine([ia3(l1), ia3(l2)], [1.0, 1.0])
    np.testing.assert_allclose(both.params["layers_0"]["mlp"]["wo"]["ia3_in"], 1 + (l1 - 1) + (l2 - 1), rtol=1e-7)
    weighted = compose.combine([ia3(l1), ia3(l2)], [0.3, -0.8])
    np.testing.assert_allclose(weighted.params["layers_0"]["mlp"]["wo"]["ia3_in"],
                               1 + 0.3 * (l1 - 1) - 0.8 * (l2 - 1), rtol=1e-6)


def test_sparse_deltas_add_exactly_over_the_union_of_indices():
    def sparse(idx, vals):
        return Module(params={"layer": {"kernel": {"indices": jnp.asarray(idx, jnp.int32),
                                                   "values": jnp.asarray(vals, jnp.float32)}}},
                      config=SparseConfig(targets=".*", density=0.5))
    s1, s2 = sparse([1, 4, 7], [0.5, -1.0, 2.0]), sparse([0, 4, 9, 11], [3.0, 0.25, -2.0, 1.0])
    out = compose.combine([s1, s2], [1.0, -2.0], "add")
    node = out.params["layer"]["kernel"]
    np.testing.assert_array_equal(node["indices"], [0, 1, 4, 7, 9, 11])
    np.testing.assert_allclose(node["values"], [-6.0, 0.5, -1.5, 2.0, 4.0, -2.0], rtol=1e-7)
    base = {"layer": {"kernel": jnp.arange(12.0).reshape(3, 4)}}
    np.testing.assert_allclose(peft.merge(base, out)["layer"]["kernel"],
                               peft.merge(base, [s1, compose.combine([s2], [-2.0])])["layer"]["kernel"], rtol=1e-7)


def test_prompts_add_and_concatenate():
    rng = np.random.default_rng(0)
    p1, p2 = (rng.normal(size=(3, 4)).astype(np.float32) for _ in range(2))
    mk = lambda e: Module(params={"prompt": {"embedding": jnp.asarray(e)}}, config=PromptConfig(length=len(e)))
    added = compose.combine([mk(p1), mk(p2)], [0.5, 2.0], "add")
    np.testing.assert_allclose(added.params["prompt"]["embedding"], 0.5 * p1 + 2.0 * p2, rtol=1e-6)
    cat = compose.combine([mk(p1), mk(p2[:2])], [1.0, -1.0], "concat")
    np.testing.assert_array_equal(cat.params["prompt"]["embedding"], np.concatenate([p1, -p2[:2]]))
    assert cat.config.length == 5


def test_adapter_stack_scales_each_residual_and_keeps_order(tiny):
    model, _ = tiny["mt5_tiny"]
    lang, task = (peft.init(model, AdapterConfig(), jax.random.key(k)) for k in (1, 2))
    lang = perturb(lang, 1, 1.0)
    out = compose.combine([lang, task], [0.5, 1.0], "stack")
    assert isinstance(out, list) and [m.metadata["composition"]["position"] for m in out] == [0, 1]
    for path, x in tu.flatten(out[0].params).items():
        factor = 0.5 if path.endswith(("/up", "/up_bias")) else 1.0
        np.testing.assert_array_equal(x, factor * tu.flatten(lang.params)[path])


# ------------------------------------------------------------------------------------------ TIES and DARE
def test_ties_matches_hand_worked_example():
    # taus (scale - 1), density 0.5 keeps 2 of 4 per module:
    #   t1 = [ 3, -1,  0.5, -4] -> [ 3,  0, 0, -4]
    #   t2 = [-2, -3,  1,    1] -> [-2, -3, 0,  0]
    #   t3 = [1.5, 2, -0.2, -1] -> [1.5, 2, 0,  0]
    # sum [2.5, -1, 0, -4] elects signs [+, -, 0, -]; disjoint means [(3+1.5)/2, -3, 0, -4].
    taus = [[3, -1, 0.5, -4], [-2, -3, 1, 1], [1.5, 2, -0.2, -1]]
    out = compose.combine([ia3(1 + np.array(t)) for t in taus], [1.0, 1.0, 1.0], "ties", density=0.5)
    np.testing.assert_allclose(out.params["layers_0"]["mlp"]["wo"]["ia3_in"], 1 + np.array([2.25, -3, 0, -4]),
                               rtol=1e-7)
    # A weight of -1 flips a task vector before the election: t2 now agrees with t1 on entry 0.
    flipped = compose.combine([ia3(1 + np.array(t)) for t in taus[:2]], [1.0, -1.0], "ties", density=0.5)
    np.testing.assert_allclose(flipped.params["layers_0"]["mlp"]["wo"]["ia3_in"], 1 + np.array([2.5, 3, 0, -4]),
                               rtol=1e-7)


def test_ties_on_lora_updates_trims_each_update():
    m1, m2 = lora(1), lora(2)
    out = delta64(compose.combine([m1, m2], [1.0, 1.0], "ties", density=1.0))
    for p in SHAPES:  # density 1 keeps everything: elected-sign mean of the two updates
        d1, d2 = delta64(m1)[p], delta64(m2)[p]
        agree = np.sign(d1) == np.sign(d2)
        ref = np.where(agree, (d1 + d2) / 2, np.where(np.abs(d1) >= np.abs(d2), d1, d2))
        assert rel_err(out[p], ref) <= REL


def test_dare_drops_and_rescales_reproducibly():
    # With p = 0.5 each output entry is one of 0, 2 l1 t1, 2 l2 t2 or their sum; values chosen so
    # the four cases are distinguishable, which recovers both masks.
    n = 4000
    t1, t2 = np.full(n, 1.0), np.full(n, 10.0)
    mods = [ia3(1 + t1), ia3(1 + t2)]
    get = lambda m: np.asarray(m.params["layers_0"]["mlp"]["wo"]["ia3_in"], np.float64) - 1
    out = get(compose.combine(mods, [1.0, 0.5], "dare", p=0.5, seed=3))
    keep1 = np.isin(out, [2.0, 12.0])
    keep2 = np.isin(out, [10.0, 12.0])
    assert np.all(np.isin(out, [0.0, 2.0, 10.0, 12.0]))
    assert abs(keep1.mean() - 0.5) < 0.04 and abs(keep2.mean() - 0.5) < 0.04
    assert abs(np.mean(keep1 == keep2) - 0.5) < 0.04  # independent masks per module
    np.testing.assert_array_equal(out, get(compose.combine(mods, [1.0, 0.5], "dare", p=0.5, seed=3)))
    assert not np.array_equal(out, get(compose.combine(mods, [1.0, 0.5], "dare", p=0.5, seed=4)))
    np.testing.assert_allclose(get(compose.combine(mods, [1.0, 0.5], "dare", p=0.0)), t1 + 0.5 * t2, rtol=1e-6)


# ------------------------------------------------------------------------------------------ refusals
def test_refuses_modules_trained_on_different_bases():
    with pytest.raises(CompositionError, match="different bases.*base0.*other"):
        compose.combine([lora(1), lora(2, base="other")], [1, 1])


def test_refuses_different_target_modules_naming_the_path():
    other = lora(2, shapes={"encoder/layers_0/attention/query": (6, 5), "encoder/layers_0/mlp/wi": (7, 4)})
    with pytest.raises(CompositionError, match="encoder/layers_0/mlp/wi"):
        compose.combine([lora(1), other], [1, 1], "delta")


def test_refuses_mismatched_ranks_under_param_naming_the_path():
    with pytest.raises(CompositionError, match=r"encoder/layers_0/attention/query/lora_a.*equal ranks"):
        compose.combine([lora(1, rank=3), lora(2, rank=2, alpha=4.0)], [1, 1], "param")
    compose.combine([lora(1, rank=3), lora(2, rank=2, alpha=4.0)], [1, 1], "concat")  # fine when exact


def test_refuses_mixed_rslora_and_different_scaling():
    with pytest.raises(CompositionError, match=r"mixed LoRA scalings at parameter 'encoder/.*rsLoRA"):
        compose.combine([lora(1), lora(2, rslora=True)], [1, 1], "delta")
    mixed = compose.combine([lora(1), lora(2, rslora=True)], [1, 1], "delta", allow_mixed_scaling=True)
    ref = delta64(lora(1))["encoder/layers_0/mlp/wo"] + delta64(lora(2, rslora=True))["encoder/layers_0/mlp/wo"]
    assert rel_err(delta64(mixed)["encoder/layers_0/mlp/wo"], ref) <= REL
    with pytest.raises(CompositionError, match=r"keeps one scaling.*encoder/.*alpha 6.*alpha 12"):
        compose.combine([lora(1), lora(2, alpha=12.0)], [1, 1], "param")


def test_refuses_mixed_families_and_wrong_weight_counts():
    with pytest.raises(CompositionError, match="mixed PEFT families.*lora.*ia3"):
        compose.combine([lora(1), ia3([1.0, 2.0])], [1, 1])
    with pytest.raises(CompositionError, match=r"shape \[n\] with n = 2 modules, got shape \(3,\)"):
        compose.combine([lora(1), lora(2)], [1, 1, 1])
    with pytest.raises(CompositionError, match="n = 2"):
        compose.combine_grid([lora(1), lora(2)], [[1, 1, 1]])


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_refuses_nan_or_inf_naming_the_leaf(bad):
    m = lora(2)
    leaf = m.params["encoder"]["layers_0"]["mlp"]["wo"]["lora_b"].at[1, 2].set(bad)
    broken = m.replace(params=tu.unflatten({**tu.flatten(m.params), "encoder/layers_0/mlp/wo/lora_b": leaf}))
    with pytest.raises(CompositionError, match=r"modules\[1\] has NaN or Inf values in parameter "
                                               r"encoder/layers_0/mlp/wo/lora_b"):
        compose.combine([lora(1), broken], [1, 1])


def test_refuses_unknown_strategy_options_and_batched_inputs():
    with pytest.raises(CompositionError, match="'concat' is not defined for ia3"):
        compose.combine([ia3([1.0])], [1], "concat")
    with pytest.raises(CompositionError, match="ambiguous for LoRA"):
        compose.combine([lora(1)], [1], "add")
    with pytest.raises(CompositionError, match=r"unknown option\(s\) \['density'\]"):
        compose.combine([lora(1)], [1], "delta", density=0.3)
    with pytest.raises(CompositionError, match="density=1.5 is out of range"):
        compose.combine([lora(1)], [1], "ties", density=1.5)
    with pytest.raises(CompositionError, match="batched"):
        compose.combine([peft.batch([lora(1), lora(2)])], [1])


# ------------------------------------------------------------------------------------------ provenance
def test_provenance_records_inputs_weights_strategy_and_base(tmp_path):
    m1, m2 = lora(1).with_metadata(language="swahili"), lora(2)
    out = compose.combine([m1, m2], [1.0, -0.5], "dare", p=0.25, seed=7)
    record = out.metadata["composition"]
    assert record["strategy"] == "dare" and record["weights"] == [1.0, -0.5]
    assert record["options"] == {"p": 0.25, "seed": 7, "space": "delta", "allow_mixed_scaling": False}
    assert [r["fingerprint"] for r in record["inputs"]] == [compose.module_fingerprint(m) for m in (m1, m2)]
    assert record["inputs"][0]["metadata"] == {"language": "swahili"}
    assert out.base_fingerprint == "base0" == record["base_fingerprint"]
    peft.save(tmp_path / "out.safetensors", out)
    loaded = peft.load(tmp_path / "out.safetensors")
    assert loaded.metadata == out.metadata
    assert compose.module_fingerprint(loaded) == compose.module_fingerprint(out)


def test_module_fingerprint_tracks_params_not_metadata():
    m = lora(1)
    assert compose.module_fingerprint(m) == compose.module_fingerprint(m.with_metadata(note="x"))
    nudged = m.replace(params=jax.tree.map(lambda x: x.at[0, 0].add(1e-3), m.params))
    assert compose.module_fingerprint(nudged) != compose.module_fingerprint(m)
    assert len(compose.module_fingerprint(m)) == 16


# ------------------------------------------------------------------------------------------ jit, vmap, sharding
def test_new_weights_do_not_retrace():
    mods = [lora(11), lora(12)]
    compose.combine(mods, [0.1, 0.9], "concat")
    size = algebra._compose._cache_size()
    for lam in (0.2, 0.5, -3.0):
        compose.combine(mods, [lam, 1 - lam], "concat")
    assert algebra._compose._cache_size() == size


def test_weight_grid_rows_equal_single_compositions_and_run_per_example(tiny):
    model, params = tiny["mt5_tiny"]
    task, lang = (peft.init(model, LoraConfig(rank=2), jax.random.key(k)) for k in (1, 2))
    task, lang = perturb(task, 1, 0.1), perturb(lang, 2, 0.1)
    grid_w = [[1.0, 0.0], [1.0, 0.5], [0.3, -1.0]]
    grid = compose.combine_grid([task, lang], grid_w, "param")
    assert grid.batched and grid.metadata["composition"]["weights"] == grid_w
    for row, single in zip(peft.unbatch(grid), grid_w):
        for a, b in zip(jax.tree.leaves(row.params), jax.tree.leaves(compose.combine([task, lang], single).params)):
            np.testing.assert_allclose(a, b, rtol=1e-6)
    tokens = jnp.array([[5, 6, 7, 1]] * 3)
    batch = {"encoder_input_tokens": tokens, "decoder_input_tokens": jnp.array([[0, 5, 6, 7]] * 3)}
    per_example = model.logits(params, batch, peft=grid)
    for g in (0, 2):
        row_batch = {k: v[g:g + 1] for k, v in batch.items()}
        single = model.logits(params, row_batch, peft=compose.combine([task, lang], grid_w[g]))
        np.testing.assert_allclose(per_example[g:g + 1], single, rtol=1e-5, atol=1e-5)


def test_weights_are_differentiable_inside_jit():
    # lambda can be learned by gradient: d/dlam sum(dW(task + lam * lang)) = sum(dW_lang) under delta.
    task, lang = lora(1), lora(2)

    def total(lam):
        out = compose.combine([task, lang], jnp.stack([1.0, lam]), "delta")
        return sum(jnp.sum(out.config.scaling * n["lora_a"] @ n["lora_b"]) for n in nodes(out).values())

    grad = jax.jit(jax.grad(total))(0.3)
    ref = sum(d.sum() for d in delta64(lang).values())
    assert float(grad) == pytest.approx(ref, rel=1e-5)
    assert compose.combine([task, lang], jnp.stack([1.0, jnp.float32(0.3)]), "delta").metadata[
        "composition"]["weights"] == pytest.approx([1.0, 0.3])


def test_stack_may_mix_families_and_keeps_each_module():
    scales = ia3([1.5, 0.5])
    out = compose.combine([lora(1), scales], [1.0, -1.0], "stack")
    assert [m.family for m in out] == ["lora", "ia3"] and same_leaves(out[0], lora(1))
    np.testing.assert_allclose(out[1].params["layers_0"]["mlp"]["wo"]["ia3_in"], [0.5, 1.5])  # 2 - l
    with pytest.raises(CompositionError, match="mixed PEFT families"):
        compose.combine([lora(1), scales], [1.0, 1.0], "param")


_SHARDED = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from peft_jax import compose, peft
    from peft_jax.compose import algebra
    from peft_jax.models import get_model
    assert jax.device_count() == 8
    mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("data", "model"))
    model = get_model("mt5_tiny")
    mods = [peft.init(model, cfg, jax.random.key(k)) for k in (1, 2) for cfg in [peft.LoraConfig(rank=4)]]
    mods += [peft.init(model, peft.IA3Config(), jax.random.key(k)) for k in (3, 4)]
    spec = lambda path: {"lora_a": P("model", None), "lora_b": P(None, "model")}.get(path[-1].key, P("model"))
    place = lambda m: m.replace(params=jax.tree_util.tree_map_with_path(
        lambda path, x: jax.device_put(x + 0.1, NamedSharding(mesh, spec(path))), m.params))
    local = [m.replace(params=jax.tree.map(lambda x: np.asarray(x) + 0.1, m.params)) for m in mods]
    sharded = [place(m) for m in mods]
    for pair, lpair in ((sharded[:2], local[:2]), (sharded[2:], local[2:])):
        out = compose.combine(pair, [0.7, -0.4])
        ref = compose.combine(lpair, [0.7, -0.4])
        for x, y, r in zip(jax.tree.leaves(out.params), jax.tree.leaves(pair[0].params), jax.tree.leaves(ref.params)):
            assert x.sharding.is_equivalent_to(y.sharding, x.ndim), (x.sharding, y.sharding)
            np.testing.assert_allclose(np.asarray(x), r, rtol=1e-6)
        plan, extras = algebra._plan(pair, "param", {})
        hlo = algebra._compose.lower([m.params for m in pair], jnp.array([0.7, -0.4]), extras,
                                     plan=plan).compile().as_text()
        for op in ("all-gather", "all-reduce", "all-to-all", "collective-permute"):
            assert op not in hlo, op
    print("OK")
""")


def test_composition_keeps_sharding_without_collectives():
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", _SHARDED], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), proc.stderr[-3000:]
