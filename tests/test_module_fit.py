"""A module applied to a base it does not fit is refused at every entry point; PEFT config values are checked
where they enter.

`peft.check_fit` is the one check (every module site exists in the base with the module's shape); the
models run it when a call starts, so `model.logits`, `generate`, `score`, evaluation and training all
refuse, naming the path. A module without a base fingerprint loads with an `UnverifiedBaseWarning`.
"""

import json
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import peft_jax
from peft_jax import evaluation, peft
from peft_jax.models import get_model
from peft_jax.peft.errors import PeftConfigError, TargetError
from peft_jax.peft.io import ModuleFileError

T5_DIMS = dict(d_model=16, d_kv=4, d_ff=16, num_heads=4, vocab_size=32)


def _mt5(layers=1, **kw):
    model = get_model("mt5_tiny", **{**T5_DIMS, "num_layers": layers, "num_decoder_layers": layers, **kw})
    return model, model.init(jax.random.key(0))


@pytest.fixture(scope="module")
def mt5():
    return _mt5()


def _batch():
    enc = jnp.asarray(np.random.default_rng(0).integers(2, 32, (2, 5)))
    dec = jnp.asarray(np.random.default_rng(1).integers(2, 32, (2, 3)))
    return {"encoder_input_tokens": enc, "decoder_input_tokens": dec, "decoder_target_tokens": dec}


def _every_entry_point_refuses(model, params, module, match):
    batch = _batch()
    with pytest.raises(TargetError, match=match):
        model.logits(params, batch, peft=module)
    with pytest.raises(TargetError, match=match):
        peft_jax.generate(model, params, {"encoder_input_tokens": batch["encoder_input_tokens"]}, peft=module,
                          max_decode_len=3)
    with pytest.raises(TargetError, match=match):
        peft_jax.score(model, params, batch, peft=module)
    with pytest.raises(TargetError, match=match):
        jax.jit(lambda p, m: model.logits(p, batch, peft=m))(params, module)  # inside jit: checked at trace
    with pytest.raises(TargetError, match=match):
        evaluation.Decoder(model, params, _Tok(), {"max_decode_len": 3}, 5, 2)(["a b", "c"], module)
    with pytest.raises(TargetError, match=match):
        peft.merge(params, module)


class _Tok:
    """Characters as token ids: enough for the evaluation Decoder."""

    pad_id, eos_id = 0, 1

    def encode(self, text):
        return [2 + ord(c) % 30 for c in text]

    def decode(self, ids):
        return " ".join(map(str, ids))


def test_decoder_only_lora_on_an_mt5_base_is_refused_everywhere(mt5):
    model, params = mt5
    palm = get_model("palm_tiny", d_model=16, num_heads=2, head_dim=8, d_ff=16, num_layers=1, vocab_size=32)
    module = peft.init(palm, peft.LoraConfig(rank=2), jax.random.key(1))
    _every_entry_point_refuses(model, params, module,
                               r"module \(lora\) does not fit this base at layers_0/attention/\w+: "
                               r"the base has no parameter layers_0/attention/\w+/kernel")


def test_two_layer_module_on_one_layer_base_is_refused_everywhere(mt5):
    model, params = mt5
    two, _ = _mt5(layers=2)
    module = peft.init(two, peft.LoraConfig(rank=2), jax.random.key(1))
    _every_entry_point_refuses(model, params, module, r"does not fit this base at (de|en)coder/layers_1/")


def test_module_of_a_wider_base_names_expected_and_actual_shapes(mt5):
    model, params = mt5
    wide, _ = _mt5(d_model=32)
    module = peft.init(wide, peft.LoraConfig(rank=2), jax.random.key(1))
    _every_entry_point_refuses(model, params, module,
                               r"expects decoder/layers_0/\w+/\w+/kernel as a \[32, 16\] matrix .* "
                               r"the base kernel has shape \(16, 16\)")


@pytest.mark.parametrize("family", ["ia3", "adapter", "prompt"])
def test_other_families_of_a_wider_base_are_refused(mt5, family):
    model, params = mt5
    wide, wide_params = _mt5(d_model=32, d_ff=32)
    config = {"ia3": peft.IA3Config(), "adapter": peft.AdapterConfig(reduction_factor=8),
              "prompt": peft.PromptConfig(length=2, init="random")}[family]
    module = peft.init(wide, config, jax.random.key(1), params=wide_params)
    with pytest.raises(TargetError, match=rf"module \({family}\) does not fit this base at "):
        model.logits(params, _batch(), peft=module)


def test_sparse_indices_past_the_end_of_the_leaf_are_refused(mt5):
    model, params = mt5
    module = peft.init(model, peft.SparseConfig(targets=r"decoder/layers_0/mlp/wo/kernel", density=0.1),
                       jax.random.key(1))
    node = module.params["decoder"]["layers_0"]["mlp"]["wo"]["kernel"]
    bad = module.replace(params={"decoder": {"layers_0": {"mlp": {"wo": {"kernel": {
        "indices": node["indices"].at[-1].set(16 * 16), "values": node["values"]}}}}}})
    with pytest.raises(TargetError, match=r"indices outside \[0, 256\) for a base leaf of shape \(16, 16\)"):
        model.logits(params, _batch(), peft=bad)


def test_a_fitting_module_runs_and_one_of_several_is_named(mt5):
    model, params = mt5
    good = peft.init(model, peft.LoraConfig(rank=2), jax.random.key(1))
    jax.eval_shape(lambda: model.logits(params, _batch(), peft=good))  # traced (so checked), not run
    two, _ = _mt5(layers=2)
    bad = peft.init(two, peft.IA3Config(), jax.random.key(1))
    with pytest.raises(TargetError, match=r"modules\[1\] \(ia3\) does not fit this base"):
        jax.eval_shape(lambda: model.logits(params, _batch(), peft=[good, bad]))


def test_loading_without_a_base_fingerprint_warns_and_a_recorded_one_is_checked(mt5, tmp_path):
    model, params = mt5
    module = peft.init(model, peft.LoraConfig(rank=2), jax.random.key(1))
    peft.save(tmp_path / "bare.peft", module)
    with pytest.warns(peft.UnverifiedBaseWarning, match="without a base fingerprint"):
        peft.load(tmp_path / "bare.peft", base_params=params)
    peft.save(tmp_path / "fp.peft", module, {"base_fingerprint": peft.fingerprint(params)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        peft.load(tmp_path / "fp.peft", base_params=params)
    other = jax.tree.map(lambda x: x + 1.0, params)
    with pytest.raises(TargetError, match="module was trained on base"):
        peft.load(tmp_path / "fp.peft", base_params=other)
    with pytest.raises(TargetError, match="does not fit this base at"):
        peft.load(tmp_path / "bare.peft", base_params={"encoder": {}, "decoder": {}})


def test_peft_load_on_an_hf_adapter_directory_says_to_use_import_hf(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    (tmp_path / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises(ModuleFileError, match=r"Hugging Face peft adapter directory.*peft.import_hf\(path, model\)"):
        peft.load(tmp_path)


# ------------------------------------------------------------------ config values
@pytest.mark.parametrize("kwargs, match", [
    ({"rank": "8"}, r"lora: rank must be an integer >= 1, got str '8'"),
    ({"rank": 8.0}, r"lora: rank must be an integer >= 1, got float 8.0"),
    ({"rank": True}, r"lora: rank must be an integer >= 1, got bool True"),
    ({"rank": -2}, r"lora: rank must be >= 1, got -2"),
    ({"alpha": math.nan}, r"lora: alpha must be finite and > 0, got nan"),
    ({"alpha": -16.0}, r"lora: alpha must be finite and > 0, got -16.0"),
    ({"alpha": math.inf}, r"lora: alpha must be finite and > 0, got inf"),
    ({"alpha": "16"}, r"lora: alpha must be a number > 0, got str '16'"),
    ({"dropout": 1.0}, r"lora: dropout must be a number in \[0, 1\), got 1.0"),
    ({"dropout": math.nan}, r"lora: dropout must be a number in \[0, 1\), got nan"),
    ({"targets": "(query"}, r"lora: targets '\(query' is not a valid regex"),
    ({"targets": None}, r"lora: targets must be a regex string, got NoneType"),
    ({"rslora": "yes"}, r"lora: rslora must be True or False"),
    ({"in_axes": (("q", 0),)}, r"lora: in_axes must be \(\(target regex, \(axis, \.\.\.\)\), \.\.\.\)"),
])
def test_bad_lora_config_values_are_refused_by_name(kwargs, match):
    with pytest.raises(PeftConfigError, match=match):
        peft.LoraConfig(**kwargs)


@pytest.mark.parametrize("make, match", [
    (lambda: peft.SparseConfig(density=math.nan), r"sparse: density must be finite and > 0, got nan"),
    (lambda: peft.SparseConfig(density=1.5), r"sparse: density must be in \(0, 1\], got 1.5"),
    (lambda: peft.AdapterConfig(reduction_factor=2.5), r"adapter: reduction_factor must be an integer >= 1"),
    (lambda: peft.PromptConfig(length="20"), r"prompt: length \(prompt length\) must be an integer >= 1"),
    (lambda: peft.IA3Config(targets="[key"), r"ia3: targets '\[key' is not a valid regex"),
])
def test_bad_config_values_of_other_families_are_refused(make, match):
    with pytest.raises(PeftConfigError, match=match):
        make()


def test_rank_larger_than_the_layer_is_refused_at_init(mt5):
    model, _ = mt5
    with pytest.raises(PeftConfigError, match=r"lora: rank 17 is larger than the layer \w+/layers_0/\w+/\w+ "
                                              r"\(\[16, 16\] as a matrix\): at most 16"):
        peft.init(model, peft.LoraConfig(rank=17), jax.random.key(0))


def test_module_files_with_bad_config_values_are_refused(mt5, tmp_path):
    model, _ = mt5
    peft.save(tmp_path / "m.peft", peft.init(model, peft.LoraConfig(rank=2), jax.random.key(1)))
    raw = (tmp_path / "m.peft").read_bytes()
    (tmp_path / "nan.peft").write_bytes(raw.replace(b'\\"alpha\\": 16.0', b'\\"alpha\\":  NaN'))  # same length
    with pytest.raises(ModuleFileError, match=r"bad module config \(lora: alpha must be finite and > 0, got nan\)"):
        peft.load(tmp_path / "nan.peft")


def test_adapters_and_prompts_need_a_peft_jax_model():
    with pytest.raises(PeftConfigError, match=r"adapter modules are created from a peft_jax model"):
        peft.init({"dense": {"kernel": jnp.ones((4, 4))}}, peft.AdapterConfig(), jax.random.key(0))
