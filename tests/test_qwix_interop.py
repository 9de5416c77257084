"""LoRA parameters made by qwix (`qwix.apply_lora_to_model`) converted to peft_jax LoRA modules and back.

Invariants: on a linen model (Dense, DenseGeneral) and an NNX model (LinearGeneral, Linear, Einsum layers
contracting leading, non-leading and batch-shared kernel axes) with qwix LoRA whose B is non-zero, the
converted module applied unmerged through `peft_jax.flax` and merged with `peft.merge` gives qwix's own
output (<= 1e-5 relative); `to_qwix(from_qwix(p))` gives back qwix's parameters exactly; a module made by
peft_jax (rsLoRA scaling) converted to qwix gives qwix the output ours gives, under the rule alpha it
was converted for; mismatches are errors naming the parameter path. (qwix 0.1.8 cannot apply LoRA
to linen `Einsum` layers: it sets an attribute on the frozen module, so Einsum is covered through NNX.)
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import qwix
from flax import nnx

import peft_jax.flax as pf
from peft_jax import peft
from peft_jax.flax import qwix as pq
from peft_jax.peft.errors import PeftConfigError, TargetError

D, H, RANK, ALPHA = 16, 2, 3, 6.0
RULES = [qwix.LoraRule(module_path=".*", rank=RANK, alpha=ALPHA)]


def rel_err(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


def randomize(tree, seed):
    """Every leaf (arrays or shapes, e.g. from `eval_shape`) set to random values, so qwix's B is non-zero.
    NumPy rather than initialisers: eager initialisers would compile once per leaf shape."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: jnp.asarray(0.3 * rng.standard_normal(x.shape), x.dtype), tree)


def assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.shape == y.shape and x.dtype == y.dtype and np.array_equal(np.asarray(x), np.asarray(y))


# ------------------------------------------------------------------ linen
class LinenNet(nn.Module):
    """DenseGeneral [d, heads, head_dim] and [heads, head_dim, d] kernels, then a Dense."""

    @nn.compact
    def __call__(self, x):
        q = nn.DenseGeneral((H, D // H), name="query")(x)
        o = nn.DenseGeneral(D, axis=(-2, -1), name="out")(jnp.tanh(q))
        return nn.Dense(12, name="mlp")(jnp.tanh(o))


@pytest.fixture(scope="module")
def linen_case():
    x = randomize(jax.ShapeDtypeStruct((2, 3, D), jnp.float32), seed=1)
    lora_model = qwix.apply_lora_to_model(LinenNet(), qwix.LoraProvider(RULES))
    params = randomize(jax.eval_shape(lora_model.init, jax.random.key(0), x)["params"], seed=2)
    want = lora_model.apply({"params": params}, x)
    module, base = pq.from_qwix(params, ALPHA)
    return x, lora_model, params, want, module, base


def test_linen_qwix_lora_matches_our_unmerged_and_merged_outputs(linen_case):
    x, _, _, want, module, base = linen_case
    assert sorted(peft.families.get("lora").nodes(module.params)) == ["mlp", "out", "query"]
    assert float(jnp.max(jnp.abs(module.params["query"]["lora_b"]))) > 0.1  # non-trivial update
    base_out = LinenNet().apply({"params": base}, x)
    assert rel_err(base_out, want) > 1e-2  # the LoRA update changes the output
    assert rel_err(pf.apply(LinenNet(), {"params": base}, x, peft=module), want) <= 1e-5
    assert rel_err(LinenNet().apply({"params": peft.merge(base, module)}, x), want) <= 1e-5


def test_linen_round_trip_gives_back_qwix_params_exactly(linen_case):
    _, _, params, _, module, _ = linen_case
    assert_trees_equal(pq.to_qwix(module, like=params, alpha=ALPHA), params)


def test_our_rslora_module_runs_identically_under_qwix(linen_case):
    x, lora_model, params, _, _, base = linen_case
    config = peft.LoraConfig(targets="query|out|mlp", rank=RANK, alpha=5.0, rslora=True)
    ours = peft.init(base, config, jax.random.key(3))
    ours = ours.replace(params=randomize(ours.params, seed=4))
    want = pf.apply(LinenNet(), {"params": base}, x, peft=ours)
    got = lora_model.apply({"params": pq.to_qwix(ours, like=params, alpha=RULES)}, x)
    assert rel_err(got, want) <= 1e-5
    other = qwix.apply_lora_to_model(LinenNet(), qwix.LoraProvider(module_path=".*", rank=RANK, alpha=1.5))
    got = other.apply({"params": pq.to_qwix(ours, like=params, alpha=1.5)}, x)
    assert rel_err(got, want) <= 1e-5


def test_qwix_rules_give_alpha_and_must_agree_with_the_factors(linen_case):
    _, _, params, _, module, _ = linen_case
    by_rule, _ = pq.from_qwix(params, [qwix.LoraRule(module_path="q.*", rank=RANK, alpha=ALPHA), *RULES])
    assert by_rule.config == module.config and module.config.scaling == ALPHA / RANK
    with pytest.raises(PeftConfigError, match=r"query: rank 3, scaling 4, but mlp has rank 3, scaling 2"):
        pq.from_qwix(params, [qwix.LoraRule(module_path="query", rank=RANK, alpha=2 * ALPHA), *RULES])
    with pytest.raises(PeftConfigError, match=r"mlp: the qwix rule for '\.\*' states rank 4"):
        pq.from_qwix(params, qwix.LoraRule(module_path=".*", rank=4, alpha=ALPHA))


def test_conversion_mismatches_name_the_parameter_path(linen_case):
    _, _, params, _, module, base = linen_case
    with pytest.raises(TargetError, match="no qwix LoRA parameters"):
        pq.from_qwix(base, ALPHA)
    broken = {**params, "mlp": {**params["mlp"], "kernel_lora_b": jnp.zeros((RANK, 7))}}
    with pytest.raises(TargetError, match=r"mlp: qwix factors A \(16, 3\), B \(3, 7\) do not fit mlp/kernel"):
        pq.from_qwix(broken, ALPHA)
    lonely = {**params, "mlp": {k: v for k, v in params["mlp"].items() if k != "kernel_lora_b"}}
    with pytest.raises(TargetError, match="mlp/kernel_lora_b is missing"):
        pq.from_qwix(lonely, ALPHA)
    fewer = {**params, "mlp": {"kernel": params["mlp"]["kernel"], "bias": params["mlp"]["bias"]}}
    with pytest.raises(TargetError, match=r"the module has LoRA at \['mlp'\] where `like` has none"):
        pq.to_qwix(module, like=fewer, alpha=ALPHA)
    other_rank = {**params, "mlp": {**params["mlp"], "kernel_lora_a": jnp.zeros((D, 4)),
                                    "kernel_lora_b": jnp.zeros((4, 12))}}
    with pytest.raises(TargetError, match=r"mlp/kernel_lora_a is \(16, 4\) in `like`.* is \(16, 3\)"):
        pq.to_qwix(module, like=other_rank, alpha=ALPHA)


def test_ambiguous_einsum_factor_axes_need_in_axes():
    tree = {"e": {"kernel": jnp.ones((4, 4, 4)), "kernel_lora_a": jnp.ones((4, 2)),
                  "kernel_lora_b": jnp.ones((2, 4, 4))}}
    with pytest.raises(TargetError, match=r"e: .* with input axes \[\(0,\), \(1,\), \(2,\)\]; say which with in_axes"):
        pq.from_qwix(tree, 2.0)
    module, _ = pq.from_qwix(tree, 2.0, in_axes=(("e", (1,)),))
    assert module.config.in_axes == (("e", (1,)),)


# ------------------------------------------------------------------ NNX
class NnxNet(nnx.Module):
    """LinearGeneral, three Einsums (leading, non-leading and a batch-shared kernel axis), a Linear."""

    def __init__(self, rngs):
        dh = D // H
        self.q = nnx.LinearGeneral(D, (H, dh), rngs=rngs)
        self.e_lead = nnx.Einsum("bthk,hkd->btd", (H, dh, D), rngs=rngs)
        self.e_mid = nnx.Einsum("btk,hkd->bthd", (H, D, dh), rngs=rngs)      # contracts kernel axis 1
        self.e_batch = nnx.Einsum("bthk,hkd->bthd", (H, dh, 4), rngs=rngs)  # h is shared with the output
        self.out = nnx.Linear(H * 4, 12, rngs=rngs)

    def __call__(self, x):
        y = jnp.tanh(self.e_lead(jnp.tanh(self.q(x))))
        y = jnp.tanh(self.e_batch(jnp.tanh(self.e_mid(y))))
        return self.out(y.reshape(y.shape[:-2] + (-1,)))


@pytest.fixture(scope="module")
def nnx_case():
    x = randomize(jax.ShapeDtypeStruct((2, 3, D), jnp.float32), seed=1)
    model = nnx.eval_shape(lambda: NnxNet(nnx.Rngs(0)))
    nnx.update(model, randomize(nnx.state(model), seed=0))
    wrap = lambda m, x: qwix.apply_lora_to_model(m, qwix.LoraProvider(RULES), x, rngs=nnx.Rngs(1))
    lora_model = nnx.eval_shape(wrap, model, x)  # a copy of `model`'s structure, with LoRA params
    nnx.update(lora_model, nnx.state(model))
    nnx.update(lora_model, randomize(nnx.state(lora_model, nnx.LoRAParam), seed=2))
    return x, model, lora_model, lora_model(x)


def test_nnx_qwix_lora_matches_our_unmerged_and_merged_outputs(nnx_case):
    x, model, lora_model, want = nnx_case
    module, _ = pq.from_qwix(nnx.state(lora_model, nnx.Param), RULES)
    assert module.config.in_axes == (("e_mid", (1,)),)
    assert rel_err(model(x), want) > 1e-2
    with pf.nnx_modules(model, module):
        assert rel_err(model(x), want) <= 1e-5
    merged = nnx.clone(model)
    nnx.update(merged, peft.merge(nnx.state(model, nnx.Param), module))
    assert rel_err(merged(x), want) <= 1e-5


def test_nnx_round_trip_gives_back_qwix_state_exactly(nnx_case):
    _, _, lora_model, want = nnx_case
    module, _ = pq.from_qwix(nnx.state(lora_model, nnx.Param), ALPHA)
    lora_state = nnx.state(lora_model, nnx.LoRAParam)
    back = pq.to_qwix(module, like=lora_state, alpha=ALPHA)
    assert type(back) is type(lora_state)
    assert_trees_equal(back, lora_state)
    with_kernels = nnx.state(lora_model, nnx.Param)
    assert_trees_equal(pq.to_qwix(module, like=with_kernels, alpha=ALPHA), with_kernels)


def test_to_qwix_refuses_a_module_reading_other_kernel_axes(nnx_case):
    _, model, lora_model, _ = nnx_case
    base = nnx.state(model, nnx.Param)
    config = peft.LoraConfig(targets="q|e_.*|out", rank=RANK, in_axes=(("e_.*", (0, 1)),))  # qwix: e_mid (1,)
    ours = peft.init(base, config, jax.random.key(0))
    expected = r"reads e_mid/kernel \(2, 16, 8\) with input axes \(0, 1\), qwix's .* \(1,\)"
    with pytest.raises(TargetError, match=expected):
        pq.to_qwix(ours, like=nnx.state(lora_model, nnx.Param), alpha=ALPHA)
