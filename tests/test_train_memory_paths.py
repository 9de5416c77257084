"""The memory-saving training paths compute exactly what the plain ones do.

- `losses.head_cross_entropy` streams the output projection and its softmax over chunks of
  positions; its loss and gradient equal a float64 NumPy computation.
- `layers.attend` has a hand-written backward; its gradients equal autodiff of the textbook formula.
- `step.train_step` streams the head only when no PEFT module changes it, and either way moves the
  PEFT parameters exactly as the full-logits path does.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from peft_jax import peft
from peft_jax.models import get_model
from peft_jax.models import layers as L
from peft_jax.train import losses, step
from peft_jax.train.inputs import memorisable_features


def _numpy_head_ce(x, kernel, transposed, scale, targets, weights, z_loss):
    """(loss_sum, nll, z, correct, d loss_sum / d x) in float64."""
    x, w_mat = x.astype(np.float64), kernel.astype(np.float64)
    w_mat = w_mat.T if transposed else w_mat
    s = 1.0 if scale is None else scale
    logits = (x * s) @ w_mat
    top = logits.max(-1, keepdims=True)
    lse = (np.log(np.exp(logits - top).sum(-1, keepdims=True)) + top)[..., 0]
    tgt = np.take_along_axis(logits, targets[..., None], -1)[..., 0]
    nll = ((lse - tgt) * weights).sum()
    z = (z_loss * lse**2 * weights).sum()
    softmax = np.exp(logits - lse[..., None])
    onehot = np.eye(logits.shape[-1])[targets]
    d_logits = weights[..., None] * ((1 + 2 * z_loss * lse)[..., None] * softmax - onehot)
    dx = (d_logits @ w_mat.T) * s
    correct = ((logits.argmax(-1) == targets) * weights).sum()
    return nll + z, nll, z, correct, dx


@pytest.mark.parametrize("transposed,scale,z_loss,chunk", [
    (False, None, 0.0, 3),  # 7 positions in chunks of 3: the last chunk is padded
    (False, None, 1e-2, 7),  # one chunk
    (True, 0.25, 1e-3, 2),  # a tied [V, D] table with T5 v1.0's rescaling
    (True, None, 0.0, None),  # default chunk size
])
def test_streamed_head_loss_and_gradient_equal_float64_numpy(transposed, scale, z_loss, chunk):
    rng = np.random.default_rng(0)
    b, t, d, v = 3, 7, 16, 50
    x = rng.normal(size=(b, t, d)).astype(np.float32)
    kernel = (rng.normal(size=(v, d) if transposed else (d, v)) * 0.5).astype(np.float32)
    targets = rng.integers(0, v, size=(b, t))
    weights = (rng.random((b, t)) > 0.3).astype(np.float32)
    head = L.Head(jnp.asarray(kernel), transposed, scale)

    def loss(x_):
        return losses.head_cross_entropy(x_, head, jnp.asarray(targets), jnp.asarray(weights), z_loss, chunk)

    (loss_sum, sums), dx = jax.value_and_grad(loss, has_aux=True)(jnp.asarray(x))
    want = _numpy_head_ce(x, kernel, transposed, scale, targets, weights.astype(np.float64), z_loss)
    np.testing.assert_allclose(float(loss_sum), want[0], rtol=1e-5)
    np.testing.assert_allclose(float(sums.nll), want[1], rtol=1e-5)
    np.testing.assert_allclose(float(sums.z_loss), want[2], rtol=1e-5, atol=1e-9)
    assert float(sums.correct) == want[3]
    assert float(sums.weight) == weights.sum()
    np.testing.assert_allclose(np.asarray(dx), want[4], rtol=1e-4, atol=1e-6)


def test_streamed_head_loss_agrees_with_cross_entropy_of_the_full_logits():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(2, 5, 8)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(8, 30)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, 30, size=(2, 5)))
    weights = jnp.ones((2, 5))
    _, streamed = losses.head_cross_entropy(x, L.Head(kernel, False, None), targets, weights, 1e-4, chunk=2)
    full = losses.cross_entropy(x @ kernel, targets, weights, 1e-4)
    for a, b in zip(streamed, full):
        np.testing.assert_allclose(float(a), float(b), rtol=1e-6)


def _plain_attend(q, k, v, bias, mask, scale):
    """Textbook grouped-query attention, differentiated by JAX itself."""
    b, t, h, kd = q.shape
    g = k.shape[2]
    k = jnp.repeat(k, h // g, axis=2)
    v = jnp.repeat(v, h // g, axis=2)
    logits = jnp.einsum("bthk,bshk->bhts", q, k) * scale + bias
    logits = jnp.where(mask[:, None], logits, L.NEG_INF)
    return jnp.einsum("bhts,bshk->bthk", jax.nn.softmax(logits, axis=-1), v).reshape(b, t, h * kd)


@pytest.mark.parametrize("heads,groups,bias_batch", [(4, 4, 1), (4, 2, 2), (4, 1, 1)])
def test_attention_gradients_equal_autodiff_of_the_textbook_formula(heads, groups, bias_batch):
    rng = np.random.default_rng(heads + groups)
    b, t, s, kd = 2, 5, 6, 8
    q, k, v = (jnp.asarray(rng.normal(size=shape), jnp.float32)
               for shape in ((b, t, heads, kd), (b, s, groups, kd), (b, s, groups, kd)))
    bias = jnp.asarray(rng.normal(size=(bias_batch, heads, t, s)), jnp.float32)
    mask = jnp.asarray(rng.random((b, t, s)) > 0.3).at[:, :, 0].set(True)
    probe = jnp.asarray(rng.normal(size=(b, t, heads * kd)), jnp.float32)

    def objective(fn):
        return lambda q_, k_, v_, bias_: jnp.sum(fn(q_, k_, v_, bias_, mask, 0.3) * probe)

    ours = jax.value_and_grad(objective(L.attend), argnums=(0, 1, 2, 3))(q, k, v, bias)
    plain = jax.value_and_grad(objective(_plain_attend), argnums=(0, 1, 2, 3))(q, k, v, bias)
    np.testing.assert_allclose(float(ours[0]), float(plain[0]), rtol=1e-5)
    for name, got, want in zip("q k v bias".split(), ours[1], plain[1]):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-5, err_msg=name)


def _setup(name, **overrides):
    overrides = dict(vocab_size=64, num_layers=1, **overrides)
    if name.startswith("mt5"):
        overrides["num_decoder_layers"] = 1
    model = get_model(name, **overrides)
    return model, model.init(jax.random.PRNGKey(0))


def _batch(model):
    objective = "seq2seq" if model.family == "encoder_decoder" else "causal_lm"
    feats = memorisable_features(model.family, objective, num_examples=4, length=12,
                                 vocab_size=model.config.vocab_size, seed=0)
    return {k: jnp.asarray(v) for k, v in losses.prepare_batch(feats, model.family, objective).items()}


@pytest.mark.parametrize("name,overrides,config,streams", [
    ("mt5_tiny", {}, peft.LoraConfig(rank=4), True),
    ("mt5_tiny", {"tie_word_embeddings": True}, peft.IA3Config(), True),  # T5 v1.0: tied and rescaled
    ("palm_tiny", {}, peft.LoraConfig(rank=4), True),  # tied decoder
    ("mt5_tiny", {}, peft.LoraConfig(rank=4, targets=".*(query|logits_dense).*"), False),  # LoRA on the head
    ("palm_tiny", {}, peft.SparseConfig(targets=".*(embedding|query/kernel)$", density=0.05), False),  # tied table
])
def test_streamed_and_full_logits_train_steps_move_peft_params_identically(name, overrides, config, streams):
    model, params = _setup(name, **overrides)
    module = peft.init(model, config, jax.random.PRNGKey(1))
    if module.family == "lora":  # B = 0 at init: move it so the first step's gradient reaches A too
        module = module.replace(params=jax.tree.map(lambda p: p + 0.05, module.params))
    assert (model.frozen_head(params, module) is not None) == streams
    optimizer = optax.adamw(1e-2)
    opt_state = optimizer.init(step.trainable(module.params))
    batch, rng = _batch(model), jax.random.PRNGKey(2)
    outs = [jax.jit(functools.partial(step.train_step, model=model, optimizer=optimizer, z_loss=1e-3,
                                      stream_head=stream))(module, opt_state, params, batch, rng)
            for stream in (True, False)]
    for key in ("loss", "z_loss", "accuracy", "grad_norm"):
        np.testing.assert_allclose(float(outs[0][2][key]), float(outs[1][2][key]), rtol=1e-5, err_msg=key)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), outs[0][0].params,
                 outs[1][0].params)
