"""The model contract: both architectures declare what training, decoding and evaluation use."""

import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from peft_jax import peft
from peft_jax.data import preprocess
from peft_jax.models import (MODEL_CLASSES, DecoderModel, Model, T5Model, get_model, load_pretrained, model_class,
                             native)
from peft_jax.peft import apply
from peft_jax.peft.scope import Scope
from peft_jax.train import losses

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "peft_jax"


@pytest.fixture(scope="module", params=["mt5_tiny", "palm_tiny"])
def model(request):
    return get_model(request.param)


def test_every_architecture_implements_the_contract_and_is_registered(model):
    assert isinstance(model, Model) and type(model) in MODEL_CLASSES
    assert model_class(model.family) is type(model) is model_class(model)
    assert hash(model) == hash(type(model)(model.config))  # jitted functions close over models
    with pytest.raises(ValueError, match="unknown model family 'rnn'"):
        model_class("rnn")


def test_objectives_and_their_batch_fields_are_declared_by_the_model(model):
    for objective, keys in type(model).OBJECTIVES.items():
        assert losses.required_keys(model, objective) == keys == losses.required_keys(model.family, objective)
        feats = losses.prepare_batch({k: np.ones((2, 4), np.int32) for k in keys}, model, objective)
        assert set(keys) <= set(feats)
    assert set(model.LOGITS_KEYS) <= set(type(model).OBJECTIVES["seq2seq"])


def test_prompt_features_are_the_start_of_the_training_pair_layout(model):
    """Generation prompts are what training features look like up to the first target token."""
    texts = [[5, 6, 7], [8, 9, 10, 11, 12, 13, 14, 15, 16, 17]]
    feats = model.prompt_features(texts, 8, pad_id=0, eos_id=1)
    if isinstance(model, T5Model):
        want = [preprocess.pad_to(preprocess.trim_and_append_eos(t, 8, 1), 8, 0) for t in texts]
        np.testing.assert_array_equal(feats["encoder_input_tokens"], np.stack(want))
        pair = model.pair_features(texts[0], [3], 8, 4, eos_id=1, pad_id=0)
        np.testing.assert_array_equal(feats["encoder_input_tokens"][0], pair["encoder_input_tokens"])
        return
    start = model.decoder_start_id  # the checkpoint's BOS (its EOS without one), never the pad id
    np.testing.assert_array_equal(feats["decoder_input_tokens"],
                                  [[start, 5, 6, 7, 1, 0, 0, 0], [start, 8, 9, 10, 11, 12, 13, 1]])
    np.testing.assert_array_equal(feats["decoder_prompt_lengths"], [5, 8])
    assert feats["decoder_input_tokens"].dtype == np.int32
    pair = model.pair_features(texts[1], [3, 4], 12, 4, eos_id=1, pad_id=0, decoder_start_id=start)
    np.testing.assert_array_equal(pair["decoder_input_tokens"][:8], feats["decoder_input_tokens"][1])


# Dropout masks are keyed by the site name (crc32), so these names fix every training run's masks.
_SITES = {
    "mt5_tiny": [
        "encoder/embed", "encoder/layers_0/attention/query/lora", "encoder/layers_0/attention/key/lora",
        "encoder/layers_0/attention/value/lora", "encoder/layers_0/attention/out/lora", "encoder/layers_0/attn",
        "encoder/layers_0/mlp/wi_0/lora", "encoder/layers_0/mlp/wi_1/lora", "encoder/layers_0/mlp/hidden",
        "encoder/layers_0/mlp/wo/lora", "encoder/layers_0/mlp_out", "encoder/final", "decoder/embed",
        "decoder/layers_0/self_attention/query/lora", "decoder/layers_0/self_attention/key/lora",
        "decoder/layers_0/self_attention/value/lora", "decoder/layers_0/self_attention/out/lora",
        "decoder/layers_0/sa", "decoder/layers_0/cross/query/lora", "decoder/layers_0/cross/key/lora",
        "decoder/layers_0/cross/value/lora", "decoder/layers_0/cross/out/lora", "decoder/layers_0/ca",
        "decoder/layers_0/mlp/wi_0/lora", "decoder/layers_0/mlp/wi_1/lora", "decoder/layers_0/mlp/hidden",
        "decoder/layers_0/mlp/wo/lora", "decoder/layers_0/mlp_out", "decoder/final", "decoder/logits/lora"],
    "palm_tiny": [
        "embed", "layers_0/attention/query/lora", "layers_0/attention/key/lora", "layers_0/attention/value/lora",
        "layers_0/attention/out/lora", "layers_0/attn", "layers_0/mlp/wi_0/lora", "layers_0/mlp/wi_1/lora",
        "layers_0/mlp/hidden", "layers_0/mlp/wo/lora", "layers_0/mlp"],
    "llama_like": [
        "embed", "layers_0/attention/query/lora", "layers_0/attention/key/lora", "layers_0/attention/value/lora",
        "layers_0/attention/out/lora", "layers_0/attn", "layers_0/mlp/wi_0/lora", "layers_0/mlp/wi_1/lora",
        "layers_0/mlp/hidden", "layers_0/mlp/wo/lora", "layers_0/mlp", "logits/lora"],
}


@pytest.mark.parametrize("name", sorted(_SITES))
def test_dropout_sites_keep_their_names_and_order(name, monkeypatch):
    kw = dict(num_layers=1, dropout_rate=0.1)
    model = {"mt5_tiny": lambda: get_model("mt5_tiny", num_decoder_layers=1, **kw),
             "palm_tiny": lambda: get_model("palm_tiny", **kw),
             "llama_like": lambda: get_model("palm_tiny", block="sequential", tie_word_embeddings=False, **kw)}[name]()
    params = model.init(jax.random.key(0))
    lora = peft.init(model, peft.LoraConfig(rank=2, dropout=0.1, targets=r".*"), jax.random.key(1), params=params)
    seen, draw = [], apply.Ctx.dropout
    monkeypatch.setattr(apply.Ctx, "dropout", lambda self, x, rate, site: seen.append(site) or draw(self, x, rate, site))
    batch = {"decoder_input_tokens": jnp.ones((1, 3), jnp.int32), "encoder_input_tokens": jnp.ones((1, 4), jnp.int32)}
    model.logits(params, batch, lora, dropout_rng=jax.random.key(2))
    assert seen == _SITES[name]


def test_a_scope_walks_params_modules_and_site_names_together():
    model = get_model("mt5_tiny")
    params = model.init(jax.random.key(0))
    lora = peft.init(model, peft.LoraConfig(rank=2), jax.random.key(1), params=params)
    root = Scope.root(params, lora, jnp.float32, jax.random.key(3))
    cross = root.child("decoder").child("layers_0").child("encoder_decoder_attention", "cross")
    assert cross.name == "decoder/layers_0/cross" and cross.child("query").name == "decoder/layers_0/cross/query"
    assert cross.params is params["decoder"]["layers_0"]["encoder_decoder_attention"]
    assert cross.child("query").active and not root.child("token_embedder").active
    x = jnp.ones((2, 3), jnp.float32)
    np.testing.assert_array_equal(cross.dropout(x, 0.5, "ca"),
                                  apply.Ctx(jnp.float32, jax.random.key(3)).dropout(x, 0.5, "decoder/layers_0/cross/ca"))


def test_expand_beams_puts_the_beams_of_row_b_at_rows_bk_to_bk_plus_k(model):
    params = model.init(jax.random.key(0))
    batch = model.prompt_features([[5, 6], [7]], 6, pad_id=0, eos_id=1)
    start = model.decode_start(model.decode_inputs({k: jnp.asarray(v) for k, v in batch.items()}))
    state = model.decode_init(params, start.init_batch, 8)  # room for the 6 prompt positions
    expanded = model.expand_beams(state, 3)

    def check(old, new):  # repeated per beam, or kept once and shared by a row's beams (cross K/V)
        np.testing.assert_array_equal(new, np.repeat(old, 3, axis=0) if new.shape[0] == 6 else old)

    jax.tree.map(check, state, expanded)
    self_cache = expanded["layers_0"] if isinstance(model, DecoderModel) else expanded["layers_0"]["self"]
    assert self_cache["k"].shape[0] == 6


def test_native_checkpoints_round_trip_every_architecture(model, tmp_path):
    params = model.init(jax.random.key(0))
    native.save(str(tmp_path), model, params)
    loaded, loaded_params = load_pretrained(str(tmp_path))
    assert loaded == model
    jax.tree.map(np.testing.assert_array_equal, loaded_params, params)


def test_hf_adapter_names_come_from_the_checkpoint_table_and_parallel_blocks_have_none(tmp_path):
    llama = get_model("palm_tiny", block="sequential")
    assert llama.hf_module_names()["layers_1/mlp/wo"] == "model.layers.1.mlp.down_proj"
    assert get_model("mt5_tiny").hf_module_names()["decoder/layers_0/encoder_decoder_attention/key"] == \
        "decoder.block.0.layer.1.EncDecAttention.k"
    palm = get_model("palm_tiny")
    module = peft.init(palm, peft.LoraConfig(rank=2), jax.random.key(1))
    with pytest.raises(peft.HFPeftError, match="sequential-block"):
        peft.export_hf(str(tmp_path), module, "base", palm)


def test_no_architecture_checks_or_model_probes_outside_the_models_package():
    """Code outside `peft_jax/models` reaches a model only through its declared contract."""
    arch = re.compile(r"family\s*[!=]=\s*['\"](encoder_decoder|decoder_only)['\"]|hasattr\(\s*(self\.)?model\b")
    offenders = [f"{p.relative_to(PACKAGE)}:{i}" for p in sorted(PACKAGE.rglob("*.py")) if "models" not in p.parts
                 for i, line in enumerate(p.read_text().splitlines(), 1) if arch.search(line)]
    assert offenders == []
