"""Bad-input cases of the catalogue: modules that do not fit their base, PEFT config values."""

from __future__ import annotations

from error_case_registry import case, expect, tiny  # noqa: F401


def _module(model, config, seed=1):
    import jax
    from peft_jax import peft

    return peft.init(model, config, jax.random.PRNGKey(seed))


def _enc_dec_batch():
    import jax.numpy as jnp

    return {"encoder_input_tokens": jnp.ones((1, 4), jnp.int32), "decoder_input_tokens": jnp.ones((1, 3), jnp.int32)}


@case("module fit", "a decoder-only LoRA applied to an mT5 base (`model.logits`, `generate`, `score`, evaluation)")
def _fit_decoder_on_mt5(tmp):
    from peft_jax import peft
    from peft_jax.models import get_model

    model, params = tiny()
    palm = get_model("palm_tiny", d_model=16, num_heads=2, head_dim=8, d_ff=16, num_layers=1, vocab_size=32)
    module = _module(palm, peft.LoraConfig(rank=2, targets=r".*attention/query"))
    return expect(peft.TargetError, model.logits, params, _enc_dec_batch(), peft=module)


def _foreign_lora_on_tiny(**dims):
    """The error of applying a LoRA made for an mT5 of other `dims` to the tiny base."""
    from peft_jax import peft
    from peft_jax.models import get_model

    model, params = tiny()
    other = get_model("mt5_tiny", **{**dict(d_model=16, d_kv=4, d_ff=16, num_heads=4, num_layers=1,
                                            num_decoder_layers=1, vocab_size=32), **dims})
    module = _module(other, peft.LoraConfig(rank=2, targets=r"encoder/.*attention/query"))
    return expect(peft.TargetError, model.logits, params, _enc_dec_batch(), peft=module)


@case("module fit", "a module for a 2-layer model applied to a 1-layer base")
def _fit_two_layers_on_one(tmp):
    return _foreign_lora_on_tiny(num_layers=2, num_decoder_layers=2)


@case("module fit", "a LoRA made for a wider base (d_model 32) applied to a d_model 16 base")
def _fit_wider(tmp):
    return _foreign_lora_on_tiny(d_model=32)


@case("module fit", "`peft.load` of a module without a base fingerprint, given the base params")
def _fit_no_fingerprint(tmp):
    import warnings

    from peft_jax import peft

    model, params = tiny()
    peft.save(tmp / "bare.peft", _module(model, peft.LoraConfig(rank=2)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", peft.UnverifiedBaseWarning)
        return expect(peft.UnverifiedBaseWarning, peft.load, tmp / "bare.peft", base_params=params)


@case("module fit", "`peft.load` given a Hugging Face peft adapter directory")
def _fit_hf_dir(tmp):
    from peft_jax import peft

    (tmp / "adapter").mkdir()
    (tmp / "adapter" / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    return expect(peft.ModuleFileError, peft.load, tmp / "adapter")


@case("module fit", "a Flax model that never calls a layer holding part of the module (a LayerNorm scale)")
def _fit_flax_unreached(tmp):
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    import peft_jax.flax as pf
    from peft_jax import peft

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(4, name="out")(nn.LayerNorm(name="norm")(x))

    x = jnp.ones((1, 4))
    variables = Net().init(jax.random.PRNGKey(0), x)
    module = peft.init(variables["params"], peft.SparseConfig(targets="norm/scale", density=0.5),
                       jax.random.PRNGKey(1))
    return expect(peft.TargetError, pf.apply, Net(), variables, x, peft=module)


@case("module fit", "LoRA on an N-D kernel whose input axes cannot be inferred ([heads, d_model, head_dim])")
def _fit_nd_axes(tmp):
    import jax
    import jax.numpy as jnp

    from peft_jax import peft

    params = {"q": {"kernel": jnp.ones((2, 16, 4))}, "norm": {"scale": jnp.ones((16,))}}
    return expect(peft.TargetError, peft.init, params, peft.LoraConfig(targets="q", rank=2), jax.random.PRNGKey(0))


@case("config", "LoRA alpha NaN")
def _cfg_alpha_nan(tmp):
    from peft_jax import peft

    return expect(peft.PeftConfigError, peft.LoraConfig, alpha=float("nan"))


@case("config", "LoRA alpha negative")
def _cfg_alpha_negative(tmp):
    from peft_jax import peft

    return expect(peft.PeftConfigError, peft.LoraConfig, alpha=-16.0)


@case("config", "LoRA rank given as a string (`rank='8'`)")
def _cfg_rank_string(tmp):
    from peft_jax import peft

    return expect(peft.PeftConfigError, peft.LoraConfig, rank="8")


@case("config", "LoRA rank given as a float (`rank=8.5`)")
def _cfg_rank_float(tmp):
    from peft_jax import peft

    return expect(peft.PeftConfigError, peft.LoraConfig, rank=8.5)


@case("config", "LoRA rank larger than a target layer")
def _cfg_rank_too_large(tmp):
    from peft_jax import peft

    model, _ = tiny()
    return expect(peft.PeftConfigError, _module, model, peft.LoraConfig(rank=17, targets=r"encoder/.*query"))


@case("config", "LoRA dropout 1.0")
def _cfg_dropout_one(tmp):
    from peft_jax import peft

    return expect(peft.PeftConfigError, peft.LoraConfig, dropout=1.0)


@case("config", "sparse density NaN")
def _cfg_density_nan(tmp):
    from peft_jax import peft

    return expect(peft.PeftConfigError, peft.SparseConfig, density=float("nan"))
