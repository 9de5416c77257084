"""A PEFT family defined entirely here, in user code, goes through every part of the package.

The toy family is a learned bias added after a kernel (zero at init). It is registered with
`peft.families.register` and then used, without any change to the package, for: init, logits,
merge (refused: the base kernels have no bias leaf to fold into), save/load, `compose.combine`,
stacking, logical axes, counting, and batched per-example decoding with `peft_jax.generate`.
Also: the registry's own contract, and that the built-in families are what the package dispatches on.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import peft_jax
from peft_jax import compose, peft
from peft_jax import tree as tu
from peft_jax.compose.checks import CompositionError
from peft_jax.models import get_model
from peft_jax.peft import apply, families
from peft_jax.peft.families import sites


@dataclasses.dataclass(frozen=True)
class BiasConfig:
    """A learned bias after every kernel whose module path matches `targets`."""

    targets: str = r"decoder/logits_dense"
    family: str = dataclasses.field(default="bias", init=False)


class BiasFamily(families.Family):
    """y = x @ W + b, with b [out] per target (per example when batched)."""

    name = "bias"
    config_class = BiasConfig
    node_keys = frozenset({"bias"})
    strategies = ("param", "stack")
    kernels = {"param": families.leafwise_sum}
    scaled_leaves = frozenset({"bias"})
    fold_refusal = "bias modules cannot be merged: the base kernels have no bias leaf to fold a bias into"

    def init(self, model, config, rng, params):
        kernels = sites.kernel_specs(model)
        return tu.unflatten({path: {"bias": jnp.zeros((kernels[path].shape[1],), jnp.float32)}
                             for path in sites.match(kernels, config.targets, "bias targets")})

    def update(self, x, view, ctx, name):
        if "bias" not in view.node:
            return None
        b = view.node["bias"].astype(ctx.dtype)
        return sites.expand_batch(b, x.ndim) if view.batched else b

    def leaf_axes(self, name, kernel_spec):
        return (kernel_spec.axes[1],) if name == "bias" and kernel_spec is not None else None


HEAD = BiasConfig()  # the output projection only: logits = base logits + b exactly
WIDE = BiasConfig(targets=r".*(attention|self_attention|encoder_decoder_attention)/(query|value)|decoder/logits_dense")


@pytest.fixture(scope="module", autouse=True)
def bias_family():
    family = families.register(BiasFamily())
    yield family
    families.unregister("bias")


@pytest.fixture(scope="module")
def t5():
    model = get_model("mt5_tiny", vocab_size=64, num_layers=2, num_decoder_layers=2)
    return model, model.init(jax.random.key(0))


def _with_bias(module, seed, scale=0.5):
    """The module with every bias drawn from a normal (NumPy: the reference below reads the same numbers)."""
    rng = np.random.default_rng(seed)
    return module.replace(params=jax.tree.map(
        lambda x: jnp.asarray(scale * rng.normal(size=x.shape), jnp.float32), module.params))


def _batch():
    tokens = np.random.RandomState(0).randint(2, 64, size=(2, 6))
    tokens[1, 4:] = 0  # a padded source
    return {"encoder_input_tokens": jnp.asarray(tokens), "decoder_input_tokens": jnp.asarray([[0, 5, 9], [0, 7, 7]])}


# ------------------------------------------------------------------------------------------ the toy family
def test_toy_family_is_registered_once_and_found_by_name(bias_family):
    assert "bias" in families.names() and families.get("bias") is bias_family
    assert compose.STRATEGIES["bias"] == ("param", "stack")
    with pytest.raises(peft.PeftConfigError, match="'bias' is already registered"):
        families.register(BiasFamily())


def test_fresh_toy_module_leaves_logits_unchanged_and_a_bias_shifts_them_exactly(t5):
    model, params = t5
    batch = _batch()
    fresh = peft.init(model, HEAD, jax.random.key(1))
    assert fresh.family == "bias" and fresh.config == HEAD
    base = model.logits(params, batch)
    np.testing.assert_array_equal(model.logits(params, batch, peft=fresh), base)
    moved = _with_bias(fresh, 1)
    b = np.asarray(moved.params["decoder"]["logits_dense"]["bias"], np.float64)
    got = np.asarray(model.logits(params, batch, peft=moved), np.float64)
    ref = np.asarray(base, np.float64) + b  # float64 reference: the base logits plus the bias on every position
    assert np.abs(got - np.asarray(base)).max() > 0.1
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5 * np.abs(ref).max())


def test_toy_bias_at_a_kernel_equals_float64_affine_map():
    rng = np.random.default_rng(2)
    x, w, b = rng.normal(size=(2, 3, 5)), rng.normal(size=(5, 4)), rng.normal(size=(4,))
    module = peft.PeftModule(params={"proj": {"bias": jnp.asarray(b, jnp.float32)}}, config=HEAD)
    views = apply.child(apply.as_views(module), "proj")
    y = apply.linear(jnp.asarray(x, jnp.float32), {"kernel": jnp.asarray(w, jnp.float32)}, views, apply.Ctx(), "proj")
    np.testing.assert_allclose(np.asarray(y, np.float64), x @ w + b, rtol=1e-5, atol=1e-5)


def test_toy_module_on_every_targeted_kernel_changes_the_model(t5):
    model, params = t5
    module = peft.init(model, WIDE, jax.random.key(1))
    paths = {p.rsplit("/", 1)[0] for p in tu.flatten(module.params)}
    assert "decoder/logits_dense" in paths and "encoder/layers_1/attention/value" in paths
    assert "decoder/layers_0/encoder_decoder_attention/query" in paths
    base_n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    n = sum(x.size for x in jax.tree.leaves(module.params))
    assert peft.count(params, module) == {"total": base_n + n, "trainable": n, "fraction_trainable": n / (base_n + n)}
    axes = tu.flatten(peft.logical_axes(model, module))
    assert axes["decoder/logits_dense/bias"] == jax.sharding.PartitionSpec("vocab")


def test_toy_module_cannot_be_merged_and_says_why(t5):
    model, params = t5
    module = _with_bias(peft.init(model, HEAD, jax.random.key(1)), 1)
    with pytest.raises(ValueError, match="no bias leaf to fold a bias into"):
        peft.merge(params, module)
    with pytest.raises(ValueError, match="no bias leaf to fold a bias into"):
        peft.unmerge(params, module)


def test_toy_module_save_load_round_trip_is_bit_exact(t5, tmp_path):
    model, params = t5
    module = _with_bias(peft.init(model, WIDE, jax.random.key(1)), 3)
    peft.save(tmp_path / "bias.peft", module, {"base_fingerprint": peft.fingerprint(params), "note": "toy"})
    loaded = peft.load(tmp_path / "bias.peft", base_params=params)
    assert loaded.config == module.config and loaded.family == "bias" and loaded.metadata["note"] == "toy"
    assert jax.tree.structure(loaded.params) == jax.tree.structure(module.params)
    jax.tree.map(np.testing.assert_array_equal, module.params, loaded.params)
    batch = _batch()
    np.testing.assert_array_equal(model.logits(params, batch, peft=loaded), model.logits(params, batch, peft=module))


def test_toy_modules_combine_as_a_weighted_sum_and_stack_scaled(t5):
    model, params = t5
    m1, m2 = (_with_bias(peft.init(model, WIDE, jax.random.key(1)), s) for s in (4, 5))
    lams = [0.7, -1.3]
    out = compose.combine([m1, m2], lams, "param")
    assert out.config == WIDE and out.metadata["composition"]["strategy"] == "param"
    for path, leaf in tu.flatten(out.params).items():
        ref = sum(lam * np.asarray(tu.flatten(m.params)[path], np.float64) for lam, m in zip(lams, (m1, m2)))
        np.testing.assert_allclose(np.asarray(leaf, np.float64), ref, rtol=1e-6, atol=1e-7)
    assert compose.combine([m1, m2], lams, "add").params.keys() == out.params.keys()  # "add" means "param"
    stacked = compose.combine([m1, m2], lams, "stack")
    for lam, m, s in zip(lams, (m1, m2), stacked):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, lam * np.asarray(b), rtol=1e-6), s.params, m.params)
    # Two biases applied together add, so the stack's logits are those of the weighted sum.
    np.testing.assert_allclose(model.logits(params, _batch(), peft=stacked), model.logits(params, _batch(), peft=out),
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(CompositionError, match="'concat' is not defined for bias modules"):
        compose.combine([m1, m2], lams, "concat")


@pytest.mark.parametrize("method", ["greedy", "beam"])
def test_batched_toy_modules_decode_row_b_with_module_b(t5, method):
    model, params = t5
    modules = [_with_bias(peft.init(model, WIDE, jax.random.key(1)), seed, scale=2.0) for seed in (6, 7)]
    batch = {"encoder_input_tokens": _batch()["encoder_input_tokens"]}
    kw = dict(method=method, max_decode_len=6, eos_id=5, **({"num_beams": 3} if method == "beam" else {}))
    together = peft_jax.generate(model, params, batch, peft=peft.batch(modules), **kw)
    for b, m in enumerate(modules):
        row = {"encoder_input_tokens": batch["encoder_input_tokens"][b:b + 1]}
        alone = peft_jax.generate(model, params, row, peft=m, **kw)
        np.testing.assert_array_equal(np.asarray(together["tokens"][b]), np.asarray(alone["tokens"][0]))
    swapped = peft_jax.generate(model, params, batch, peft=peft.batch(modules[::-1]), **kw)
    assert not np.array_equal(np.asarray(together["tokens"]), np.asarray(swapped["tokens"]))  # the modules matter


# ------------------------------------------------------------------------------------------ the registry
def test_registry_refuses_a_config_without_the_family_field():
    @dataclasses.dataclass(frozen=True)
    class NoFamily:
        rank: int = 1

    class Broken(BiasFamily):
        name = "broken"
        config_class = NoFamily

    with pytest.raises(peft.PeftConfigError, match="must have a field family = 'broken'"):
        families.register(Broken())
    with pytest.raises(peft.PeftConfigError, match="not a PEFT config"):
        peft.init(None, NoFamily(), jax.random.key(0))
    with pytest.raises(peft.PeftConfigError, match="unknown PEFT family 'broken'"):
        families.get("broken")


def test_built_in_families_are_registered_in_order_with_their_configs():
    assert families.names()[:5] == ("lora", "prompt", "ia3", "adapter", "sparse")
    configs = [peft.LoraConfig, peft.PromptConfig, peft.IA3Config, peft.AdapterConfig, peft.SparseConfig]
    for name, config_class in zip(families.names(), configs):
        assert families.get(name).config_class is config_class and config_class().family == name
        assert families.of_config(config_class()) is families.get(name)
    assert peft.Module is peft.PeftModule  # the former name keeps working


def test_train_config_peft_sections_are_the_dataclass_defaults():
    from peft_jax.train import config_lib

    sections = config_lib.peft_sections()
    assert "bias" in sections  # a registered family gets its section too
    for name in families.names():
        section = sections.copy_and_resolve_references()
        section.family = name
        assert config_lib.peft_config(section) == families.get(name).config_class()
    assert sections.sparse.dense_fraction == 0.5  # a schedule knob, not a SparseConfig field
