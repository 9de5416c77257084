"""`save_pretrained` writes a base with a LoRA merged in as a Hugging Face checkpoint that transformers
loads with our logits (within 1e-4), and that loads back through `load_pretrained`."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

import peft_jax
from peft_jax import peft
from peft_jax.models import DecoderConfig, T5Config
from peft_jax.models.registry import model_for_config
from peft_jax.models.spec import flatten, unflatten

TOL = 1e-4
CONFIGS = {
    "mt5": T5Config(vocab_size=64, d_model=16, d_kv=8, d_ff=24, num_heads=2, num_layers=1, num_decoder_layers=2,
                    relative_attention_num_buckets=8, relative_attention_max_distance=16, dropout_rate=0.0),
    "llama": DecoderConfig(vocab_size=64, d_model=16, num_heads=4, head_dim=8, d_ff=24, num_layers=2, num_kv_heads=2,
                           block="sequential", tie_word_embeddings=False, rope_theta=500.0),
}


@functools.partial(jax.jit, static_argnums=0)
def logits(model, params, batch, module=None):
    return model.logits(params, batch, peft=module)


def _params(model, seed):
    """Random base parameters drawn on the host (norm scales near one, or near zero where stored as 1 + scale)."""
    rng = np.random.default_rng(seed)
    draw = lambda s: (s.init == "ones") + (0.1 if s.init != "normal" else s.stddev) * rng.standard_normal(s.shape)
    return unflatten({k: jnp.asarray(draw(s), jnp.float32) for k, s in flatten(model.param_specs()).items()})


def _lora(model, seed):
    """A LoRA whose B is non-zero, so merging it changes the logits."""
    module = peft.init(model, peft.LoraConfig(rank=2, alpha=4), jax.random.key(seed))
    rng = np.random.default_rng(seed)
    return module.replace(params=jax.tree.map(
        lambda x: x + jnp.asarray(0.3 * rng.standard_normal(x.shape), x.dtype), module.params))


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_saved_checkpoint_loads_in_transformers_with_our_merged_logits(tmp_path, kind):
    model = model_for_config(CONFIGS[kind])
    params = _params(model, 0)
    lora = _lora(model, 3)
    peft_jax.save_pretrained(tmp_path, model, params, peft=lora)
    rng = np.random.default_rng(0)
    if kind == "mt5":
        enc, dec = rng.integers(2, 64, (2, 7)), rng.integers(2, 64, (2, 5))
        enc[1, 4:] = 0
        batch = {"encoder_input_tokens": jnp.asarray(enc), "decoder_input_tokens": jnp.asarray(dec)}
        tm = transformers.MT5ForConditionalGeneration.from_pretrained(tmp_path).eval()
        with torch.no_grad():
            ref = tm(input_ids=torch.tensor(enc), attention_mask=torch.tensor(enc != 0),
                     decoder_input_ids=torch.tensor(dec)).logits.numpy()
    else:
        toks = rng.integers(2, 64, (2, 9))
        batch = {"decoder_input_tokens": jnp.asarray(toks)}
        tm = transformers.LlamaForCausalLM.from_pretrained(tmp_path).eval()
        with torch.no_grad():
            ref = tm(input_ids=torch.tensor(toks)).logits.numpy()
    ours = np.asarray(logits(model, params, batch, lora))
    np.testing.assert_array_less(np.abs(ours - ref).max(), TOL)
    reloaded, reparams = peft_jax.load_pretrained(tmp_path)
    assert reloaded.config == model.config
    moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), reparams, params)
    assert max(jax.tree.leaves(moved)) > 1e-2  # the LoRA was merged into what was written
    np.testing.assert_allclose(np.asarray(logits(reloaded, reparams, batch)), ours, atol=1e-5)
