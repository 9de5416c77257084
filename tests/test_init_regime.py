"""The initialisation regime: shared or per-module seeds, A's drift, and the param-vs-exact composition gap
(checked against a float64 NumPy computation of the LoRA deltas)."""

import jax
import numpy as np
import pytest

from peft_jax import peft
from peft_jax.models import get_model
from peft_jax.pipeline import init_regime
from peft_jax.tree import flatten, unflatten


@pytest.fixture(scope="module")
def base():
    model = get_model("mt5_tiny", d_model=16, d_kv=4, d_ff=16, num_heads=4, num_layers=1, num_decoder_layers=1,
                      vocab_size=32)
    return model, model.init(jax.random.PRNGKey(0))


def _trained(model, seed, b_seed, a_noise=0.0):
    """A LoRA module initialised from `seed` whose B (and optionally A) moved as training would move them."""
    m = peft.init(model, peft.LoraConfig(rank=2, alpha=4.0, targets=r".*self_attention/(query|value)$"),
                  jax.random.PRNGKey(seed))
    flat = flatten(m.params)
    rng = np.random.default_rng(b_seed)
    for k, v in flat.items():
        if k.endswith("lora_b"):
            flat[k] = rng.normal(size=v.shape).astype(np.float32)
        elif a_noise:
            flat[k] = np.asarray(v) + a_noise * rng.normal(size=v.shape).astype(np.float32)
    return m.replace(params=unflatten(flat))


def test_shared_init_gives_every_module_the_run_seed_and_per_module_seeds_differ():
    assert {init_regime.module_seed(3, k, l, True) for k, l in [("lang", "hindi"), ("task", "english")]} == {3}
    seeds = {init_regime.module_seed(3, k, l, False) for k, l in [("lang", "hindi"), ("lang", "urdu"), ("task", "hindi")]}
    assert len(seeds) == 3 and init_regime.module_seed(3, "lang", "hindi", False) == \
        init_regime.module_seed(3, "lang", "hindi", False)


def test_a_drift_is_one_for_an_unmoved_a_and_below_one_when_a_moved(base):
    model, _ = base
    assert init_regime.a_drift(model, _trained(model, 7, 0), 7) == {"mean": pytest.approx(1.0, abs=1e-6),
                                                                   "min": pytest.approx(1.0, abs=1e-6)}
    moved = init_regime.a_drift(model, _trained(model, 7, 0, a_noise=0.3), 7)
    assert moved["min"] < 0.99


def _numpy_gap(modules, weights, scaling):
    """||ΔW_param - ΔW_exact|| / ||ΔW_exact|| in float64 from the factors."""
    flats = [{k: np.asarray(v, np.float64) for k, v in flatten(m.params).items()} for m in modules]
    num = den = 0.0
    for k in flats[0]:
        if not k.endswith("lora_a"):
            continue
        kb = k[:-len("lora_a")] + "lora_b"
        a = sum(w * f[k] for w, f in zip(weights, flats))
        b = sum(w * f[kb] for w, f in zip(weights, flats))
        exact = sum(w * f[k] @ f[kb] for w, f in zip(weights, flats)) * scaling
        num += np.sum((scaling * a @ b - exact) ** 2)
        den += np.sum(exact ** 2)
    return np.sqrt(num / den)


def test_param_gap_matches_a_float64_reference_and_is_small_only_with_shared_a(base):
    model, params = base
    shared = [_trained(model, 1, 10), _trained(model, 1, 11)]
    independent = [_trained(model, 1, 10), _trained(model, 2, 11)]
    scaling = 4.0 / 2
    for modules in (shared, independent):
        for weights in ([0.5, 0.5], [1.0, 1.0]):
            got = init_regime.param_gap(params, modules, weights)
            assert got == pytest.approx(_numpy_gap(modules, weights, scaling), rel=1e-4, abs=1e-6)
    # Weights summing to 1 over a shared A: param arithmetic is exact; summing to 2 (add) doubles A.
    assert init_regime.param_gap(params, shared, [0.5, 0.5]) < 1e-5
    assert init_regime.param_gap(params, shared, [1.0, 1.0]) == pytest.approx(1.0, rel=1e-4)
    assert init_regime.param_gap(params, independent, [0.5, 0.5]) > 0.3
