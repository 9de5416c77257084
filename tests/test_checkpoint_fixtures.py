"""Every upstream-written checkpoint in tests/data/checkpoints loads through `load_pretrained` with the
upstream logits (within 1e-4), and every tensor its files hold becomes a parameter."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import torch
from flax import serialization

import peft_jax
import testdata
from peft_jax.models import T5Config
from peft_jax.models.checkpoints.t5x import T5xSource
from peft_jax.models.spec import flatten
from peft_jax.tree import flatten as flatten_tree

TOL = 1e-4
HF = ["hf_mt5_safetensors", "hf_mt5_pytorch_bin", "hf_mt5_flax_msgpack", "hf_llama_safetensors",
      "hf_llama_safetensors/transformers4", "hf_gemma2_safetensors", "hf_gemma2_safetensors/transformers4",
      "hf_llama3_rope_scaling", "hf_llama3_rope_scaling/transformers4"]
T5X = ["t5x_mt5_legacy", "t5x_mt5_orbax"]


def mt5_config() -> T5Config:
    """The fixtures' mT5, described without config.json (as a t5x user would)."""
    c = json.loads(testdata.path("checkpoints", "hf_mt5_safetensors", "fixture.json").read_text())["config"]
    keys = ("vocab_size", "d_model", "d_kv", "d_ff", "num_heads", "num_layers", "num_decoder_layers",
            "relative_attention_num_buckets", "relative_attention_max_distance", "dropout_rate")
    return T5Config(**{k: c[k] for k in keys})


@pytest.fixture(scope="module", params=HF + T5X)
def loaded(request):
    name = request.param
    path = testdata.path("checkpoints", *name.split("/"))
    model, params = peft_jax.load_pretrained(path, model=mt5_config() if name in T5X else None)
    return name, path, model, params


@functools.partial(jax.jit, static_argnums=0)
def logits(model, params, batch):
    """Jitted once per distinct model: the four mT5 fixtures share one compilation."""
    return model.logits(params, batch)


def batch_of(expected, model) -> dict:
    if model.family == "encoder_decoder":
        return {"encoder_input_tokens": jnp.asarray(expected["input_ids"]),
                "decoder_input_tokens": jnp.asarray(expected["decoder_input_ids"])}
    return {"decoder_input_tokens": jnp.asarray(expected["input_ids"])}


def test_fixture_logits_match_the_upstream_library(loaded):
    name, path, model, params = loaded
    expected = np.load(path / "expected.npz")
    out = np.asarray(logits(model, params, batch_of(expected, model)))
    assert out.shape == expected["logits"].shape
    np.testing.assert_array_less(np.abs(out - expected["logits"]).max(), TOL)


def file_tensors(name: str, path) -> dict[str, np.ndarray]:
    """Every tensor of the checkpoint's weight file(s), read with the upstream library of its format."""
    if (path / "model.safetensors").exists():
        return safetensors.numpy.load_file(str(path / "model.safetensors"))
    if (path / "pytorch_model.bin").exists():
        return {k: v.numpy() for k, v in torch.load(path / "pytorch_model.bin", weights_only=True).items()}
    if (path / "flax_model.msgpack").exists():
        return flatten_tree(serialization.msgpack_restore((path / "flax_model.msgpack").read_bytes()))
    return {k: np.asarray(v[...]) for k, v in T5xSource(str(path)).tensors.items()}


def test_every_tensor_of_the_checkpoint_becomes_a_parameter(loaded):
    name, path, model, params = loaded
    leaves = {k: np.asarray(v) for k, v in flatten(params).items()}
    matched = set()
    for tname, t in file_tensors(name, path).items():
        hits = [k for k, leaf in leaves.items() if (leaf.shape == t.shape and np.array_equal(leaf, t)) or
                (leaf.shape == t.T.shape and np.array_equal(leaf, t.T))]
        assert hits, f"{name}: tensor {tname} is not a parameter of the loaded model"
        matched.update(hits)
    assert matched == set(leaves), f"{name}: parameters not from the file: {sorted(set(leaves) - matched)}"


def test_t5x_checkpoint_needs_a_model_description():
    with pytest.raises(peft_jax.models.CheckpointError, match="holds no model description: pass model="):
        peft_jax.load_pretrained(testdata.path("checkpoints", "t5x_mt5_orbax"))


def test_t5x_checkpoint_with_fewer_layers_described_is_refused_naming_a_tensor():
    small = mt5_config().__class__(**{**mt5_config().__dict__, "num_decoder_layers": 2})
    with pytest.raises(peft_jax.models.CheckpointError, match=r"tensor 'decoder/layers_2/.*' is not used"):
        peft_jax.load_pretrained(testdata.path("checkpoints", "t5x_mt5_legacy"), model=small)
