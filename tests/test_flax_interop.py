"""PEFT modules on Flax models written without peft_jax (a linen and an NNX transformer defined here).

Invariants: a module applied unmerged through `peft_jax.flax` gives the logits of the base with the module
merged into its parameter tree (<= 1e-5 relative); a fresh module gives the base's logits bit for bit;
`peft_jax.flax.train_step` trains only the module (loss down, base unchanged to the bit); two modules
composed with `compose.combine` give the logits of the base plus the composed delta computed in float64
NumPy; per-example (batched) modules give row b the logits of module b alone.
"""

import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.core import FrozenDict

import peft_jax.flax as pf
from peft_jax import compose, peft
from peft_jax.peft.errors import TargetError

D, H, V, LAYERS = 16, 2, 32, 1
LORA = peft.LoraConfig(targets=r".*/(query|key|value|out|wi|wo)", rank=2, alpha=4.0)

ROOT = pathlib.Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ the third-party models
class LinenBlock(nn.Module):
    """Pre-norm causal self-attention with DenseGeneral [d, heads, head_dim] / [heads, head_dim, d] kernels."""

    @nn.compact
    def __call__(self, x):
        dh = D // H
        y = nn.LayerNorm(name="ln1")(x)
        q, k, v = (nn.DenseGeneral((H, dh), name=n)(y) for n in ("query", "key", "value"))
        a = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(dh)
        a = jax.nn.softmax(jnp.where(jnp.tril(jnp.ones(a.shape[-2:], bool)), a, -1e9), axis=-1)
        x = x + nn.DenseGeneral(D, axis=(-2, -1), name="out")(jnp.einsum("bhqk,bkhd->bqhd", a, v))
        y = nn.LayerNorm(name="ln2")(x)
        return x + nn.Dense(D, name="wo")(jax.nn.gelu(nn.Dense(2 * D, name="wi")(y)))


class LinenLM(nn.Module):
    """Token embedding, LAYERS blocks, logits through the tied embedding (`Embed.attend`)."""

    @nn.compact
    def __call__(self, ids):
        embed = nn.Embed(V, D, name="embed")
        x = embed(ids)
        for i in range(LAYERS):
            x = LinenBlock(name=f"layers_{i}")(x)
        return embed.attend(nn.LayerNorm(name="ln_f")(x))


class NnxBlock(nnx.Module):
    """The same block in NNX: LinearGeneral attention, an Einsum MLP input, a Linear MLP output."""

    def __init__(self, rngs):
        self.ln1, self.ln2 = nnx.LayerNorm(D, rngs=rngs), nnx.LayerNorm(D, rngs=rngs)
        self.query, self.key, self.value = (nnx.LinearGeneral(D, (H, D // H), rngs=rngs) for _ in range(3))
        self.out = nnx.LinearGeneral((H, D // H), D, axis=(-2, -1), rngs=rngs)
        self.wi = nnx.Einsum("btd,df->btf", (D, 2 * D), (2 * D,), rngs=rngs)
        self.wo = nnx.Linear(2 * D, D, rngs=rngs)

    def __call__(self, x):
        y = self.ln1(x)
        q, k, v = self.query(y), self.key(y), self.value(y)
        a = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(D // H)
        a = jax.nn.softmax(jnp.where(jnp.tril(jnp.ones(a.shape[-2:], bool)), a, -1e9), axis=-1)
        x = x + self.out(jnp.einsum("bhqk,bkhd->bqhd", a, v))
        return x + self.wo(jax.nn.gelu(self.wi(self.ln2(x))))


class NnxLM(nnx.Module):
    def __init__(self, rngs):
        self.embed = nnx.Embed(V, D, rngs=rngs)
        self.layers = nnx.List([NnxBlock(rngs) for _ in range(LAYERS)])
        self.ln_f = nnx.LayerNorm(D, rngs=rngs)

    def __call__(self, ids):
        x = self.embed(ids)
        for layer in self.layers:
            x = layer(x)
        return self.embed.attend(self.ln_f(x))


IDS = jnp.asarray(np.random.default_rng(0).integers(0, V, (2, 6)))


def _filled(abstract, seed=0):
    """Random float32 values for a tree of shapes, drawn with NumPy (no XLA compilation for the init)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: jnp.asarray(0.5 * rng.standard_normal(s.shape), jnp.float32), abstract)


@pytest.fixture(scope="module")
def linen():
    model = LinenLM()
    return model, _filled(jax.eval_shape(model.init, jax.random.key(0), IDS)["params"])


@pytest.fixture(scope="module")
def nnx_model():
    model = nnx.eval_shape(lambda: NnxLM(nnx.Rngs(0)))
    nnx.update(model, _filled(nnx.state(model, nnx.Param)))
    return model


def _linen_logits(model, params, module=None):
    return np.asarray(pf.apply(model, {"params": params}, IDS, peft=module))


def _nnx_logits(model, module=None, params=None):
    """Logits of the NNX model (with `params` swapped in, if given), with `module` applied unmerged."""
    graph, state = nnx.split(model)
    m = nnx.merge(graph, state if params is None else nnx.merge_state(state, params))
    with pf.nnx_modules(m, module):
        return np.asarray(m(IDS))


def _perturb(module, seed=1, scale=0.2):
    """The module with every float leaf moved away from its init (NumPy noise: nothing to compile)."""
    rng = np.random.default_rng(seed)
    return module.replace(params=jax.tree.map(
        lambda x: x if x.dtype == jnp.int32 else jnp.asarray(x + scale * rng.standard_normal(x.shape), jnp.float32),
        module.params))


def _rel(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(np.asarray(b))))


CONFIGS = {
    "lora": LORA,
    "ia3": peft.IA3Config(targets=r".*/(key|value|wo)", feedforward=r".*/wo"),
    "sparse": peft.SparseConfig(targets=r".*/(query/kernel|wi/kernel|embed/embedding)", density=0.2),
}


# ------------------------------------------------------------------ linen
def test_lora_factors_read_dense_general_kernels_as_matrices(linen):
    _, params = linen
    module = peft.init(params, LORA, jax.random.key(1))
    shapes = jax.tree.map(jnp.shape, module.params["layers_0"])
    assert shapes["query"] == {"lora_a": (D, 2), "lora_b": (2, D)}  # [d, heads, head_dim]: inputs = axis 0
    assert shapes["out"] == {"lora_a": (D, 2), "lora_b": (2, D)}  # [heads, head_dim, d]: inputs = axes 0, 1
    assert shapes["wi"] == {"lora_a": (D, 2), "lora_b": (2, 2 * D)}


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_linen_fresh_module_gives_base_logits_exactly(linen, family):
    model, params = linen
    module = peft.init(params, CONFIGS[family], jax.random.key(1))
    np.testing.assert_array_equal(_linen_logits(model, params, module), _linen_logits(model, params))


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_linen_unmerged_logits_equal_merged_params_logits(linen, family):
    model, params = linen
    module = _perturb(peft.init(params, CONFIGS[family], jax.random.key(1)))
    unmerged = _linen_logits(model, params, module)
    merged = _linen_logits(model, peft.merge(params, module))
    assert _rel(unmerged, merged) <= 1e-5
    assert _rel(unmerged, _linen_logits(model, params)) > 1e-3  # the module does change the logits


def test_linen_merge_keeps_frozen_dict_and_unmerge_inverts(linen):
    model, params = linen
    frozen = FrozenDict(params)
    module = _perturb(peft.init(frozen, LORA, jax.random.key(1)))
    merged = peft.merge(frozen, module)
    assert isinstance(merged, FrozenDict)
    back = peft.unmerge(merged, module)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), back, frozen)


def test_linen_several_modules_apply_together_in_order(linen):
    model, params = linen
    lora = _perturb(peft.init(params, LORA, jax.random.key(1)))
    ia3 = _perturb(peft.init(params, CONFIGS["ia3"], jax.random.key(2)), seed=2)
    together = _linen_logits(model, params, [lora, ia3])
    assert _rel(together, _linen_logits(model, peft.merge(params, [lora, ia3]))) <= 1e-5


def test_linen_batched_modules_give_row_b_the_logits_of_module_b(linen):
    model, params = linen
    m0 = _perturb(peft.init(params, LORA, jax.random.key(1)), seed=3)
    m1 = _perturb(peft.init(params, LORA, jax.random.key(1)), seed=4)
    rows = np.asarray(pf.apply(model, {"params": params}, IDS, peft=peft.batch([m0, m1])))
    for b, m in enumerate((m0, m1)):
        alone = np.asarray(pf.apply(model, {"params": params}, IDS[b:b + 1], peft=m))[0]
        np.testing.assert_allclose(rows[b], alone, rtol=1e-5, atol=1e-6)


def _float64_merged(params, modules, weights):
    """The base with the `param` composition sum_i w_i A_i, sum_i w_i B_i folded in, in float64 NumPy."""
    flat = {k: np.asarray(v, np.float64) for k, v in peft.families.sites.tree_leaves(params).items()}
    scaling = modules[0].config.scaling
    for path in peft.families.get("lora").nodes(modules[0].params):
        node = lambda m: peft.families.get("lora").nodes(m.params)[path]
        a = sum(w * np.asarray(node(m)["lora_a"], np.float64) for m, w in zip(modules, weights))
        b = sum(w * np.asarray(node(m)["lora_b"], np.float64) for m, w in zip(modules, weights))
        w = flat[path + "/kernel"]
        flat[path + "/kernel"] = w + scaling * (a @ b).reshape(w.shape)  # all kernels here: inputs leading
    return flat


def test_composed_linen_modules_give_the_float64_composed_delta(linen):
    model, params = linen
    m1 = _perturb(peft.init(params, LORA, jax.random.key(1)), seed=5)
    m2 = _perturb(peft.init(params, LORA, jax.random.key(2)), seed=6)
    composed = compose.combine([m1, m2], [0.7, -0.4], strategy="param")
    ref = peft.families.sites.tree_leaves(params)
    want = {k: jnp.asarray(v, jnp.float32) for k, v in _float64_merged(params, [m1, m2], [0.7, -0.4]).items()}
    ref_params = jax.tree_util.tree_map_with_path(
        lambda p, x: want[peft.families.sites.tree_path(p)], params)
    assert set(want) == set(ref)
    assert _rel(_linen_logits(model, params, composed), _linen_logits(model, ref_params)) <= 1e-5


def test_lora_trains_on_a_linen_model_and_the_base_stays_bit_identical(linen):
    model, params = linen
    before = jax.tree.map(np.array, params)
    targets = jnp.roll(IDS, -1, axis=1)

    def loss_fn(module, base, ids, rng):
        logits = pf.apply(model, {"params": base}, ids, peft=module)
        return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

    optimizer = optax.adam(1e-1)
    step = pf.train_step(loss_fn, optimizer)
    module = peft.init(params, LORA, jax.random.key(1))
    state = pf.init_opt_state(optimizer, module)
    losses = []
    for _ in range(8):
        module, state, loss = step(module, state, params, IDS, None)
        losses.append(float(loss))
    assert losses[-1] < 0.8 * losses[0]
    jax.tree.map(np.testing.assert_array_equal, params, before)
    assert set(jax.tree.leaves(jax.tree.map(jnp.shape, state[0].mu))) == set(
        jax.tree.leaves(jax.tree.map(jnp.shape, module.params)))  # optimizer state: the module's leaves only


def test_a_module_part_the_model_never_computes_with_is_refused(linen):
    model, params = linen
    # LayerNorm scales are parameters (so the module fits) but no intercepted layer reads them.
    module = peft.init(params, peft.SparseConfig(targets=r".*ln1/scale", density=0.5), jax.random.key(1))
    with pytest.raises(TargetError, match=r"never applied the module parameters at \['layers_0/ln1/scale'"):
        _linen_logits(model, params, module)


# ------------------------------------------------------------------ NNX
@pytest.mark.parametrize("family", ["lora", "ia3"])
def test_nnx_fresh_module_gives_base_logits_exactly(nnx_model, family):
    module = peft.init(nnx.state(nnx_model, nnx.Param), CONFIGS[family], jax.random.key(1))
    np.testing.assert_array_equal(_nnx_logits(nnx_model, module), _nnx_logits(nnx_model))


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_nnx_unmerged_logits_equal_merged_state_logits(nnx_model, family):
    state = nnx.state(nnx_model, nnx.Param)
    module = _perturb(peft.init(state, CONFIGS[family], jax.random.key(1)))
    merged = peft.merge(state, module)
    assert isinstance(merged, nnx.State)
    unmerged = _nnx_logits(nnx_model, module)
    assert _rel(unmerged, _nnx_logits(nnx_model, params=merged)) <= 1e-5
    assert _rel(unmerged, _nnx_logits(nnx_model)) > 1e-3


def test_nnx_composed_modules_and_training(nnx_model):
    state = nnx.state(nnx_model, nnx.Param)
    before = jax.tree.map(np.array, state)
    graph, rest = nnx.split(nnx_model)
    targets = jnp.roll(IDS, -1, axis=1)

    def loss_fn(module, base, ids, rng):
        m = nnx.merge(graph, nnx.merge_state(rest, base))
        with pf.nnx_modules(m, module):
            logits = m(ids)
        return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

    optimizer = optax.adam(1e-1)
    step = pf.train_step(loss_fn, optimizer)
    module = peft.init(state, LORA, jax.random.key(1))
    opt_state = pf.init_opt_state(optimizer, module)
    first = None
    for _ in range(6):
        module, opt_state, loss = step(module, opt_state, state, IDS, None)
        first = float(loss) if first is None else first
    assert float(loss) < 0.8 * first
    jax.tree.map(np.testing.assert_array_equal, state, before)
    other = _perturb(peft.init(state, LORA, jax.random.key(2)), seed=7)
    composed = compose.combine([module, other], [0.5, 0.5], strategy="param")
    want = {k: jnp.asarray(v, jnp.float32) for k, v in _float64_merged(state, [module, other], [0.5, 0.5]).items()}
    ref = jax.tree_util.tree_map_with_path(lambda p, x: want[peft.families.sites.tree_path(p)], state)
    assert _rel(_nnx_logits(nnx_model, composed), _nnx_logits(nnx_model, params=ref)) <= 1e-5


# ------------------------------------------------------------------ N-D kernels
def test_nd_kernel_input_axes_are_inferred_or_given_per_pattern():
    # [heads, d, head_dim] (a gemma-style einsum kernel): the width sits in the middle, so it is not inferred.
    params = {"attn": {"q": {"kernel": jnp.ones((H, D, 4))}, "norm": {"scale": jnp.ones((D,))},
                       "o": {"kernel": jnp.ones((D, D))}}}
    with pytest.raises(TargetError, match=r"attn/q: cannot tell the input axes of its kernel of shape \(2, 16, 4\)"):
        peft.init(params, peft.LoraConfig(targets=r"attn/q", rank=2), jax.random.key(0))
    cfg = peft.LoraConfig(targets=r"attn/q", rank=2, in_axes=((r"attn/q", (1,)),))
    module = _perturb(peft.init(params, cfg, jax.random.key(0)))
    node = module.params["attn"]["q"]
    assert node["lora_a"].shape == (D, 2) and node["lora_b"].shape == (2, H * 4)
    merged = peft.merge(params, module)["attn"]["q"]["kernel"]
    delta = cfg.scaling * np.asarray(node["lora_a"], np.float64) @ np.asarray(node["lora_b"], np.float64)
    want = 1.0 + delta.reshape(D, H, 4).transpose(1, 0, 2)  # rows are axis 1, columns axes (0, 2)
    np.testing.assert_allclose(merged, want, rtol=1e-6, atol=1e-6)


def test_einsum_layer_with_given_input_axes_applies_unmerged():
    class Gemmaish(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Einsum((H, D, 4), "btd,hdk->bthk", use_bias=False, name="q")(x)

    x = jax.random.normal(jax.random.key(2), (2, 3, D))
    model = Gemmaish()
    params = model.init(jax.random.key(0), x)["params"]
    cfg = peft.LoraConfig(targets="q", rank=2, in_axes=(("q", (1,)),))
    module = _perturb(peft.init(params, cfg, jax.random.key(0)))
    got = pf.apply(model, {"params": params}, x, peft=module)
    assert _rel(got, model.apply({"params": peft.merge(params, module)}, x)) <= 1e-5


# ------------------------------------------------------------------ the README example
def _readme_example() -> str:
    """The Python block of the README's "Use it with your own model" section, as users read it."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Use it with your own model"):]
    start = section.index("```python\n") + len("```python\n")
    return section[start:section.index("\n```", start)]


README_EXAMPLE = _readme_example()


def test_readme_example_runs_and_its_merge_matches():
    namespace = {}
    exec(compile(README_EXAMPLE, "README_EXAMPLE", "exec"), namespace)
    assert len([line for line in README_EXAMPLE.splitlines() if line.strip()]) == 15
    ns = type("NS", (), namespace)
    unmerged = pf.apply(ns.model, ns.variables, ns.x, peft=ns.lora)
    assert _rel(unmerged, ns.model.apply({"params": ns.merged}, ns.x)) <= 1e-5
    assert float(ns.value) < float(jnp.mean(ns.model.apply(ns.variables, ns.x) ** 2))
