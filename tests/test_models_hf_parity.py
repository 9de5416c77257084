"""The Flax-free models reproduce PyTorch `transformers` on converted random checkpoints."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import peft_jax
from peft_jax.models import CheckpointError, get_model
from peft_jax.models import safetensors_io as st
from peft_jax.models.spec import flatten
import hf_checkpoints as H

TOL = 1e-4  # max |logits_jax - logits_torch| in float32

MT5_VARIANTS = [
    dict(),  # 2 encoder / 3 decoder layers, 4 heads of 8
    dict(num_layers=3, num_decoder_layers=1, num_heads=2, d_kv=16, relative_attention_num_buckets=32,
         relative_attention_max_distance=128),
    dict(num_layers=1, num_decoder_layers=2, num_heads=6, d_kv=4, d_model=24, relative_attention_num_buckets=4,
         relative_attention_max_distance=8),
]


def _t5_batch(rng, vocab, b=3, s=11, t=6):
    enc = rng.integers(2, vocab, (b, s))
    enc[1, 7:] = 0  # padding in the encoder input
    enc[2, 3:] = 0
    dec = rng.integers(2, vocab, (b, t))
    dec[:, 0] = 0
    return enc, dec


@pytest.mark.parametrize("variant", range(len(MT5_VARIANTS)))
def test_mt5_logits_match_transformers(tmp_path, variant):
    tm = H.save_mt5(tmp_path, seed=variant, **MT5_VARIANTS[variant])
    model, params = peft_jax.load_pretrained(tmp_path)
    enc, dec = _t5_batch(np.random.default_rng(variant), model.config.vocab_size)
    with torch.no_grad():
        ref = tm(input_ids=torch.tensor(enc), attention_mask=torch.tensor(enc != 0),
                 decoder_input_ids=torch.tensor(dec)).logits.numpy()
    out = model.logits(params, {"encoder_input_tokens": jnp.asarray(enc), "decoder_input_tokens": jnp.asarray(dec)})
    assert out.dtype == jnp.float32 and out.shape == ref.shape
    np.testing.assert_array_less(np.abs(np.asarray(out) - ref).max(), TOL)


def test_mt5_with_untied_encoder_and_decoder_embeddings_matches_transformers(tmp_path):
    tm = H.save_mt5(tmp_path, untied_inputs=True)
    model, params = peft_jax.load_pretrained(tmp_path)
    assert model.config.encoder_embedding and model.config.decoder_embedding
    enc, dec = _t5_batch(np.random.default_rng(5), model.config.vocab_size)
    with torch.no_grad():
        ref = tm(input_ids=torch.tensor(enc), attention_mask=torch.tensor(enc != 0),
                 decoder_input_ids=torch.tensor(dec)).logits.numpy()
    out = model.logits(params, {"encoder_input_tokens": jnp.asarray(enc), "decoder_input_tokens": jnp.asarray(dec)})
    np.testing.assert_array_less(np.abs(np.asarray(out) - ref).max(), TOL)


@pytest.mark.parametrize("family,overrides", [
    ("llama", dict()),  # grouped-query: 4 heads, 2 KV heads
    ("llama", dict(num_key_value_heads=1, num_attention_heads=2, head_dim=16, tie_word_embeddings=True)),  # MQA
    ("gemma", dict()),
])
def test_decoder_logits_match_transformers(tmp_path, family, overrides):
    tm = H.save_llama(tmp_path, family=family, **overrides)
    model, params = peft_jax.load_pretrained(tmp_path)
    toks = np.random.default_rng(1).integers(2, model.config.vocab_size, (2, 13))
    with torch.no_grad():
        ref = tm(input_ids=torch.tensor(toks)).logits.numpy()
    out = np.asarray(model.logits(params, {"decoder_input_tokens": jnp.asarray(toks)}))
    np.testing.assert_array_less(np.abs(out - ref).max(), TOL)


def test_sharded_bf16_checkpoint_loads_and_matches(tmp_path):
    tm = H.save_mt5(tmp_path, dtype=torch.bfloat16, max_shard_size="20KB")
    assert os.path.isfile(tmp_path / "model.safetensors.index.json")
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    model, params = peft_jax.load_pretrained(tmp_path)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
    enc, dec = _t5_batch(np.random.default_rng(0), model.config.vocab_size)
    with torch.no_grad():  # the reference computes in float32 from the same bf16-rounded weights
        ref = tm.float()(input_ids=torch.tensor(enc), attention_mask=torch.tensor(enc != 0),
                         decoder_input_ids=torch.tensor(dec)).logits.numpy()
    out = np.asarray(model.logits(params, {"encoder_input_tokens": jnp.asarray(enc),
                                           "decoder_input_tokens": jnp.asarray(dec)}))
    np.testing.assert_array_less(np.abs(out - ref).max(), TOL)


@pytest.mark.parametrize("maker", ["mt5", "llama"])
def test_every_parameter_comes_from_the_checkpoint(tmp_path, maker):
    tm = H.save_mt5(tmp_path) if maker == "mt5" else H.save_llama(tmp_path)
    _, params = peft_jax.load_pretrained(tmp_path)
    torch_tensors = {}
    for name, t in tm.state_dict().items():  # one entry per storage: tied copies count once
        torch_tensors.setdefault(t.data_ptr(), (name, t.float().numpy()))
    unmatched = dict(torch_tensors)
    for path, leaf in flatten(params).items():
        leaf = np.asarray(leaf)
        hit = next((k for k, (_, t) in unmatched.items()
                    if (t.shape == leaf.shape and np.array_equal(t, leaf)) or
                    (t.T.shape == leaf.shape and np.array_equal(t.T, leaf))), None)
        assert hit is not None, f"{path} equals no tensor of the checkpoint"
        del unmatched[hit]
    assert not unmatched, f"checkpoint tensors not loaded: {[n for n, _ in unmatched.values()]}"


def test_bf16_compute_with_f32_params_stays_close(tmp_path):
    H.save_mt5(tmp_path)
    model, params = peft_jax.load_pretrained(tmp_path, compute_dtype="bfloat16")
    model32, _ = peft_jax.load_pretrained(tmp_path)
    enc, dec = _t5_batch(np.random.default_rng(0), model.config.vocab_size)
    batch = {"encoder_input_tokens": jnp.asarray(enc), "decoder_input_tokens": jnp.asarray(dec)}
    lo, hi = model.logits(params, batch), model32.logits(params, batch)
    assert lo.dtype == jnp.float32 and all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
    assert float(jnp.abs(lo - hi).max()) < 0.1 * float(jnp.abs(hi).max())


@pytest.mark.parametrize("name", ["mt5_tiny", "palm_tiny", "mt5_small", "palm_small"])
def test_every_parameter_has_logical_axes(name):
    model = get_model(name)
    specs = flatten(model.param_specs())
    leaves = jax.tree.leaves(model.logical_axes(), is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    assert len(leaves) == len(specs)
    for spec in specs.values():
        assert len(spec.axes) == len(spec.shape) and all(isinstance(a, str) for a in spec.axes)


def test_mt5_small_preset_has_the_real_dimensions():
    c = get_model("mt5_small").config
    assert (c.vocab_size, c.d_model, c.d_ff, c.num_heads, c.d_kv, c.num_layers, c.num_decoder_layers) == \
        (250112, 512, 1024, 6, 64, 8, 8)
    assert not c.tie_word_embeddings


# ------------------------------------------------------------------ bad checkpoints
def _rewrite(path, drop=None, reshape=None):
    f = st.SafetensorsFile(str(path))
    tensors = {n: np.array(f.get(n)) for n in f.names if n != drop}
    if reshape:
        tensors[reshape] = tensors[reshape][:-1]
    st.write(str(path), tensors, {"format": "pt"})


def test_missing_directory_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        peft_jax.load_pretrained(tmp_path / "nope")


def test_missing_and_corrupt_config_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="missing config.json"):
        peft_jax.load_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json.*corrupt|corrupt config.json"):
        peft_jax.load_pretrained(tmp_path)


def test_unsupported_architecture_is_named(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BertModel"], "model_type": "bert"}))
    with pytest.raises(CheckpointError, match="unsupported architecture 'BertModel'"):
        peft_jax.load_pretrained(tmp_path)


def test_missing_tensor_is_named(tmp_path):
    H.save_mt5(tmp_path)
    _rewrite(tmp_path / "model.safetensors", drop="decoder.block.1.layer.2.DenseReluDense.wo.weight")
    with pytest.raises(CheckpointError, match=r"missing tensor 'decoder\.block\.1\.layer\.2\.DenseReluDense\.wo"):
        peft_jax.load_pretrained(tmp_path)


def test_wrong_shape_is_named(tmp_path):
    H.save_mt5(tmp_path)
    _rewrite(tmp_path / "model.safetensors", reshape="encoder.block.0.layer.0.SelfAttention.q.weight")
    with pytest.raises(CheckpointError, match=r"model\.safetensors: tensor 'encoder\.block\.0\.layer\.0\.SelfAttention"
                                              r"\.q\.weight' has shape \(31, 32\), expected \(32, 32\)"):
        peft_jax.load_pretrained(tmp_path)


def test_truncated_safetensors_is_named(tmp_path):
    H.save_mt5(tmp_path)
    f = tmp_path / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: truncated safetensors file"):
        peft_jax.load_pretrained(tmp_path)


def _fixture_copy(tmp_path, name):
    import shutil

    import testdata

    path = tmp_path / name
    shutil.copytree(testdata.path("checkpoints", name), path, ignore=shutil.ignore_patterns("transformers4"))
    return path


def test_pytorch_bin_without_torch_names_what_to_install(tmp_path, monkeypatch):
    path = _fixture_copy(tmp_path, "hf_mt5_pytorch_bin")
    monkeypatch.setitem(sys.modules, "torch", None)  # as if torch were not installed
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin: reading a PyTorch \.bin checkpoint needs `torch`, "
                                              r"which is not installed: pip install torch"):
        peft_jax.load_pretrained(path)


def test_hub_id_offline_is_a_clear_error(tmp_path):
    code = ("import peft_jax\ntry:\n    peft_jax.load_pretrained('google/mt5-small')\n"
            "except ValueError as e:\n    print(e)")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
                         cwd=tmp_path)
    assert "google/mt5-small: not a local directory, and fetching it from the Hugging Face Hub failed" in out.stdout


def test_index_listing_a_tensor_its_shard_lacks_is_named(tmp_path):
    H.save_mt5(tmp_path, max_shard_size="20KB")
    index = tmp_path / "model.safetensors.index.json"
    meta = json.loads(index.read_text())
    name = "encoder.block.0.layer.0.SelfAttention.q.weight"
    shard = next(f for f in sorted(set(meta["weight_map"].values())) if f != meta["weight_map"][name])
    meta["weight_map"][name] = shard
    index.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"lists tensor 'encoder\.block\.0\.layer\.0\.SelfAttention\.q\.weight' "
                                              rf"in {shard}, which does not hold it"):
        peft_jax.load_pretrained(tmp_path)


def test_safetensors_entry_with_short_offsets_names_file_and_tensor(tmp_path):
    import struct

    path = _fixture_copy(tmp_path, "hf_mt5_safetensors")
    raw = (path / "model.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    header["lm_head.weight"]["data_offsets"][1] -= 8
    blob = json.dumps(header, separators=(",", ":")).encode().ljust(n)
    (path / "model.safetensors").write_bytes(raw[:8] + blob + raw[8 + n:])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: tensor 'lm_head\.weight' of shape \(384, 32\) and "
                                              r"dtype F32 needs 49152 bytes, but its header offsets .* give 49144"):
        peft_jax.load_pretrained(path)


def test_mt5_tied_without_a_head_tensor_is_refused_by_name(tmp_path):
    # transformers 4 rescales a tied mT5 head by d_model**-0.5 and 5 does not: no number is safe to give.
    path = _fixture_copy(tmp_path, "hf_mt5_safetensors")
    import safetensors.numpy

    tensors = safetensors.numpy.load_file(str(path / "model.safetensors"))
    del tensors["lm_head.weight"]
    safetensors.numpy.save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**cfg, "tie_word_embeddings": True}))
    with pytest.raises(CheckpointError, match="tie_word_embeddings=true and no distinct lm_head.weight"):
        peft_jax.load_pretrained(path)


def test_lazy_tensor_slices_of_a_transposed_weight_equal_numpy_slices(tmp_path):
    # What a device reads of a sharded load: a slice of the transposed file tensor, read piecewise.
    import safetensors.numpy

    from peft_jax.models.checkpoints.hf_safetensors import SafetensorsSource

    w = np.arange(6 * 10, dtype=np.float32).reshape(6, 10)
    safetensors.numpy.save_file({"w": w}, str(tmp_path / "model.safetensors"))
    lazy = SafetensorsSource(str(tmp_path)).get("w")
    for idx in [(slice(0, 5), slice(2, 4)), (slice(None), slice(3, None)), (Ellipsis,), (slice(7, 10),)]:
        np.testing.assert_array_equal(lazy.T[idx], w.T[idx])
    np.testing.assert_array_equal(lazy[1:4], w[1:4])
