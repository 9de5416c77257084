"""Invariants of the pure train step: only PEFT params move, losses and accumulation are exact."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from peft_jax import peft
from peft_jax.models import get_model
from peft_jax.train import losses, optimizers, sparse, step
from peft_jax.train.inputs import memorisable_features

FAMILIES = {
    "lora": (peft.LoraConfig(rank=4), 1e-2),
    "prompt": (peft.PromptConfig(length=4, init="random"), 3e-1),
    "ia3": (peft.IA3Config(), 1e-1),
    "adapter": (peft.AdapterConfig(reduction_factor=4), 3e-2),
    "sparse": (peft.SparseConfig(density=0.05), 3e-2),
}


@functools.lru_cache(maxsize=None)
def _model_and_params(name: str):
    # One-layer versions of the tiny presets: the invariants do not depend on depth, compilation does.
    overrides = dict(vocab_size=64, num_layers=1)
    if name.startswith("mt5"):
        overrides["num_decoder_layers"] = 1
    model = get_model(name, **overrides)
    return model, model.init(jax.random.PRNGKey(0))


def _batch(model, objective, n=8, length=16, seed=0):
    feats = memorisable_features(model.family, objective, num_examples=n, length=length,
                                 vocab_size=model.config.vocab_size, seed=seed)
    return {k: jnp.asarray(v) for k, v in losses.prepare_batch(feats, model.family, objective).items()}


def _jitted_step(model, optimizer, micro_batches=1):
    return jax.jit(functools.partial(step.train_step, model=model, optimizer=optimizer, micro_batches=micro_batches))


def _close(actual, desired, rtol):
    """allclose with the absolute tolerance scaled to the array (entries near 0 come from cancellations)."""
    desired = np.asarray(desired)
    np.testing.assert_allclose(actual, desired, rtol=rtol, atol=rtol * float(np.abs(desired).max() + 1e-30))


def _size(tree) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


@pytest.mark.parametrize("family", ["lora", "sparse"])
def test_only_peft_params_change_and_optimizer_state_holds_nothing_of_the_base(family):
    model, params = _model_and_params("mt5_tiny")
    before = jax.tree.map(np.array, params)
    module = peft.init(model, FAMILIES[family][0], jax.random.PRNGKey(1))
    optimizer = optax.adamw(1e-2)
    opt_state = optimizer.init(step.trainable(module.params))
    fn = _jitted_step(model, optimizer)
    batch = _batch(model, "span_corruption")
    new = module
    for i in range(3):
        new, opt_state, _ = fn(new, opt_state, params, batch, jax.random.PRNGKey(i))
    # The base is bit-identical; the PEFT float leaves moved; sparse indices did not.
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, np.asarray(b)), before, params)
    moved = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))), step.trainable(module.params),
                         step.trainable(new.params))
    assert any(jax.tree.leaves(moved))
    jax.tree.map(np.testing.assert_array_equal, step.frozen(module.params), step.frozen(new.params))
    # AdamW keeps two moments per trainable scalar plus one step count: nothing else.
    n_trainable = _size(step.trainable(module.params))
    assert _size(opt_state) == 2 * n_trainable + 1
    assert _size(opt_state) < _size(params)  # a copy of the base would be at least twice its size
    assert n_trainable == peft.count(params, module)["trainable"]


@pytest.mark.parametrize("model_name,objective", [("mt5_tiny", "seq2seq"), ("palm_tiny", "causal_lm")])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_loss_goes_down_on_a_memorisable_batch(family, model_name, objective):
    model, params = _model_and_params(model_name)
    config, lr = FAMILIES[family]
    module = peft.init(model, config, jax.random.PRNGKey(1), params=params)
    optimizer = optax.adam(lr)
    opt_state = optimizer.init(step.trainable(module.params))
    fn = _jitted_step(model, optimizer)
    batch = _batch(model, objective)
    curve = []
    for i in range(30):
        module, opt_state, metrics = fn(module, opt_state, params, batch, jax.random.PRNGKey(i))
        curve.append(float(metrics["loss"]))
    assert np.all(np.isfinite(curve))
    # A 4-vector prompt cannot encode "reverse the input", so the bar is modest; the others drop far below it.
    assert curve[-1] < 0.9 * curve[0], f"{family}/{model_name}: loss {curve[0]:.3f} -> {curve[-1]:.3f}"


def test_bfloat16_compute_trains_float32_peft_params():
    model = get_model("palm_tiny", vocab_size=64, num_layers=1, dtype="bfloat16")
    params = model.init(jax.random.PRNGKey(0))
    module = peft.init(model, peft.LoraConfig(rank=4), jax.random.PRNGKey(1))
    optimizer = optax.adam(1e-2)
    opt_state = optimizer.init(step.trainable(module.params))
    fn, batch = _jitted_step(model, optimizer), _batch(model, "causal_lm")
    curve = []
    for i in range(20):
        module, opt_state, metrics = fn(module, opt_state, params, batch, jax.random.PRNGKey(i))
        curve.append(float(metrics["loss"]))
    assert {x.dtype for x in jax.tree.leaves(module.params)} == {jnp.dtype(jnp.float32)}
    assert curve[-1] < 0.8 * curve[0], curve


@pytest.mark.parametrize("model_name,objective", [("mt5_tiny", "seq2seq"), ("palm_tiny", "prefix_lm")])
def test_gradient_accumulation_over_micro_batches_equals_one_big_batch(model_name, objective):
    model, params = _model_and_params(model_name)
    module = peft.init(model, peft.LoraConfig(rank=4), jax.random.PRNGKey(1))
    # A nonzero B so that every LoRA factor has a gradient.
    module = module.replace(params=jax.tree.map(lambda x: x + 0.01, module.params))
    batch = _batch(model, objective, n=8)
    grads = {}
    for k in (1, 4):
        fn = jax.jit(functools.partial(step.loss_and_grads, model=model, micro_batches=k, z_loss=1e-3))
        grads[k] = fn(module, params, batch, jax.random.PRNGKey(0))
    (g1, s1), (g4, s4) = grads[1], grads[4]
    jax.tree.map(functools.partial(_close, rtol=2e-5), g4, g1)
    np.testing.assert_allclose(s1.nll, s4.nll, rtol=1e-5)
    assert float(s1.weight) == float(s4.weight)


def test_train_step_with_micro_batches_updates_like_one_big_batch():
    model, params = _model_and_params("palm_tiny")
    module = peft.init(model, peft.AdapterConfig(reduction_factor=4), jax.random.PRNGKey(1))
    batch = _batch(model, "causal_lm", n=8)
    # SGD: the update is linear in the gradient, so float rounding is not amplified as by Adam's normalisation.
    optimizer = optax.sgd(0.5)
    outs = [_jitted_step(model, optimizer, k)(module, optimizer.init(step.trainable(module.params)), params, batch,
                                              jax.random.PRNGKey(0)) for k in (1, 2)]
    jax.tree.map(functools.partial(_close, rtol=1e-5), outs[1][0].params, outs[0][0].params)
    np.testing.assert_allclose(outs[0][2]["loss"], outs[1][2]["loss"], rtol=1e-6)


def test_cross_entropy_with_masking_and_z_loss_equals_float64_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 5, 11)).astype(np.float32) * 3
    targets = rng.integers(0, 11, size=(3, 5))
    weights = (rng.random((3, 5)) > 0.3).astype(np.float32)
    sums = losses.cross_entropy(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weights), z_loss=1e-2)
    x = logits.astype(np.float64)
    log_z = np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1)) + x.max(-1)
    nll = log_z - np.take_along_axis(x, targets[..., None], -1)[..., 0]
    np.testing.assert_allclose(float(sums.nll), (nll * weights).sum(), rtol=1e-6)
    np.testing.assert_allclose(float(sums.z_loss), (1e-2 * log_z**2 * weights).sum(), rtol=1e-6)
    assert float(sums.weight) == weights.sum()
    assert float(sums.correct) == ((x.argmax(-1) == targets) * weights).sum()


def test_non_finite_loss_leaves_module_and_optimizer_state_unchanged():
    model, params = _model_and_params("palm_tiny")
    module = peft.init(model, peft.LoraConfig(rank=4), jax.random.PRNGKey(1))
    optimizer = optax.adamw(1e-2)
    opt_state = optimizer.init(step.trainable(module.params))
    batch = _batch(model, "causal_lm")
    batch["decoder_loss_weights"] = batch["decoder_loss_weights"].at[0, 0].set(jnp.nan)
    new, new_opt, metrics = _jitted_step(model, optimizer)(module, opt_state, params, batch, jax.random.PRNGKey(0))
    assert int(metrics["finite"]) == 0
    jax.tree.map(np.testing.assert_array_equal, module.params, new.params)
    jax.tree.map(np.testing.assert_array_equal, opt_state, new_opt)


def test_prepare_batch_names_missing_fields_and_refuses_packed_batches():
    model, _ = _model_and_params("palm_tiny")
    feats = memorisable_features("decoder_only", "prefix_lm", num_examples=2, length=8, vocab_size=64)
    with pytest.raises(losses.BatchError, match="decoder_causal_attention"):
        losses.prepare_batch({k: v for k, v in feats.items() if k != "decoder_causal_attention"},
                             "decoder_only", "prefix_lm")
    with pytest.raises(losses.BatchError, match="segment"):
        losses.prepare_batch({**feats, "decoder_segment_ids": feats["decoder_target_tokens"]},
                             "decoder_only", "prefix_lm")
    with pytest.raises(losses.BatchError, match="span_corruption.*decoder_only"):
        losses.required_keys("decoder_only", "span_corruption")
    # Causal-LM weights default to the non-padding targets.
    lm = memorisable_features("decoder_only", "causal_lm", num_examples=2, length=8, vocab_size=64)
    lm.pop("decoder_loss_weights")
    out = losses.prepare_batch(lm, "decoder_only", "causal_lm")
    np.testing.assert_array_equal(out["decoder_loss_weights"], lm["decoder_target_tokens"] != 0)


def test_select_keeps_the_largest_entries_of_each_leaf_and_rewinds_them():
    model, _ = _model_and_params("mt5_tiny")
    config = peft.SparseConfig(targets=r".*mlp/wo/kernel$", density=0.1)
    dense = sparse.dense_module(model, config)
    rng = np.random.default_rng(0)
    dense = dense.replace(params=jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), x.dtype)
                                              if x.dtype == jnp.float32 else x, dense.params))
    chosen = sparse.select(dense, 0.1)
    reference = peft.init(model, config, jax.random.PRNGKey(0))
    assert jax.tree.structure(chosen) == jax.tree.structure(reference)  # same shapes as a fresh module
    for path, node in peft_jax_flat(dense).items():
        values = np.asarray(node["values"])
        k = sparse.num_selected(values.size, 0.1)
        want = np.sort(np.argsort(-np.abs(values), kind="stable")[:k])
        got = peft_jax_flat(chosen)[path]
        np.testing.assert_array_equal(np.asarray(got["indices"]), want)
        assert not np.any(np.asarray(got["values"]))
    kept = sparse.select(dense, 0.1, rewind=False)
    for path, node in peft_jax_flat(kept).items():
        np.testing.assert_array_equal(node["values"], np.asarray(peft_jax_flat(dense)[path]["values"])[
            np.asarray(node["indices"])])


def peft_jax_flat(module):
    from peft_jax import tree as tu
    return tu.flatten(module.params, is_leaf=lambda x: isinstance(x, dict) and "indices" in x)


def test_warmup_then_cosine_schedule_matches_its_formula():
    cfg = ml_collections.ConfigDict(dict(learning_rate=1.0, warmup_steps=10, schedule="cosine", end_lr_ratio=0.1))
    schedule = optimizers.make_schedule(cfg, total_steps=110)
    for t in (0, 5, 10, 60, 110):
        if t <= 10:
            want = t / 10
        else:
            want = 0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * (t - 10) / 100))
        np.testing.assert_allclose(float(schedule(t)), want, rtol=1e-6, atol=1e-7)
    cfg.schedule = "rsqrt"
    np.testing.assert_allclose(float(optimizers.make_schedule(cfg, 110)(40)), (10 / 40) ** 0.5, rtol=1e-6)
    with pytest.raises(optimizers.OptimizerConfigError, match="schedule"):
        cfg.schedule = "exponential"
        optimizers.make_schedule(cfg, 10)


def test_memorisable_features_of_a_model_start_with_its_bos_and_follow_the_attention_mode():
    """Given a model (not just a family name), every decoder sequence starts with its start token."""
    llama_ids = dict(pad_id=0, bos_id=1, eos_id=2)
    model = get_model("palm_tiny", vocab_size=64, num_layers=1, **llama_ids)
    kw = dict(num_examples=3, length=12, vocab_size=64, eos_id=2, pad_id=0)
    for objective in ("causal_lm", "prefix_lm", "seq2seq"):
        feats = memorisable_features(model, objective, **kw)
        np.testing.assert_array_equal(feats["decoder_input_tokens"][:, 0], 1)
    prefix = memorisable_features(model, "seq2seq", **kw)
    causal = memorisable_features(model, "seq2seq", prefix=False, **kw)
    assert prefix["decoder_causal_attention"].any() and not causal["decoder_causal_attention"].any()
    np.testing.assert_array_equal(prefix["decoder_loss_weights"], causal["decoder_loss_weights"])
    t5 = get_model("mt5_tiny", vocab_size=64)
    np.testing.assert_array_equal(memorisable_features(t5, "seq2seq", **kw)["decoder_input_tokens"][:, 0],
                                  t5.config.decoder_start_id)
