"""No silently wrong checkpoint: a genuine Hugging Face fixture with one config field or one tensor changed
either fails to load with an error naming what changed, or loads with the logits transformers computes
for the changed checkpoint (within 1e-4). Never anything else.

Random mutations (seeded, a few per fixture, among every field but the metadata ones and every tensor)
plus the named examples that once gave wrong numbers silently.
"""

import functools
import json
import random
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.torch
import torch
import transformers

import peft_jax
import testdata
from peft_jax.models import CheckpointError

TOL = 1e-4
FIXTURES = {"hf_mt5_safetensors": 3, "hf_llama_safetensors": 3, "hf_gemma2_safetensors": 3,
            "hf_llama3_rope_scaling/transformers4": 3, "hf_mt5_pytorch_bin": 2, "hf_mt5_flax_msgpack": 2}
# transformers 5 reads no Flax checkpoints: the msgpack fixture's reference is transformers on the same
# weights from the safetensors fixture, under the mutated config. Its tensors are not mutated.
SAME_WEIGHTS = {"hf_mt5_flax_msgpack": "hf_mt5_safetensors"}
# Metadata and batch conventions (token ids), not computation: left alone. `dtype` is the dtype the
# reference is asked to compute in, float32 on both sides.
NOT_MUTATED = {"architectures", "model_type", "transformers_version", "dtype", "bos_token_id", "eos_token_id",
               "pad_token_id", "decoder_start_token_id"}
STRINGS = ["relu", "gelu", "silu", "gelu_new", "tanh", "gated-silu", "gated-relu", "linear", "llama3", "dynamic",
           "yarn", "default", "full_attention", "sliding_attention"]


# ---------------------------------------------------------------------------------- mutations
def _tweak(value, rng: random.Random):
    """Another plausible value of the same kind."""
    if isinstance(value, bool) or value is None:
        return not value
    if isinstance(value, int):
        return max(1, value + rng.choice([-1, 1, value]))
    if isinstance(value, float):
        return value * rng.choice([0.5, 1.5]) if value else 0.1
    if isinstance(value, str):
        return rng.choice([s for s in STRINGS if s != value])
    if isinstance(value, list):
        out = list(value)
        i = rng.randrange(len(out))
        out[i] = _tweak(out[i], rng)
        return out
    raise TypeError(value)


def config_fields(cfg: dict) -> list[tuple[str, ...]]:
    """Every mutable field, nested ones (rope settings) as (parent, key)."""
    out = []
    for k, v in cfg.items():
        if k in NOT_MUTATED:
            continue
        out += [(k, sub) for sub in v] if isinstance(v, dict) else [(k,)]
    return out


class Mutation:
    """One change to a copied checkpoint; `names` are the words a refusal must contain (one of them)."""

    def __init__(self, label, apply, names):
        self.label, self.apply, self.names = label, apply, names

    def __repr__(self):
        return self.label


def set_field(keys, value) -> Mutation:
    def apply(path):
        cfg = json.loads((path / "config.json").read_text())
        parent = cfg
        for k in keys[:-1]:
            parent = parent[k]
        parent[keys[-1]] = value
        (path / "config.json").write_text(json.dumps(cfg))
    return Mutation(f"{'.'.join(keys)}={value!r}", apply, list(keys))


def edit_tensors(label, fn, names) -> Mutation:
    def apply(path):
        if (path / "pytorch_model.bin").exists():
            tensors = torch.load(path / "pytorch_model.bin", weights_only=True)
            fn(tensors)
            torch.save(tensors, path / "pytorch_model.bin")
            return
        tensors = safetensors.torch.load_file(path / "model.safetensors")
        fn(tensors)
        safetensors.torch.save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    return Mutation(label, apply, names)


def tensor_mutation(name: str, kind: str) -> Mutation:
    def fn(t):
        if kind == "drop":
            del t[name]
        elif kind == "extra":
            t[name.replace("weight", "extra_weight")] = t[name].clone()
        elif kind == "truncate":
            t[name] = t[name][:-1].clone()
        elif kind == "int8":  # a quantized weight with its scale beside it
            scale = t[name].abs().max() / 127
            t[name] = torch.round(t[name] / scale).to(torch.int8)
            t[name + "_scale"] = scale.reshape(1)
        elif kind == "bf16":
            t[name] = t[name].to(torch.bfloat16)
        elif kind == "scale":
            t[name] = t[name] * 1.5
    extra = [name.replace("weight", "extra_weight")] if kind == "extra" else []
    return edit_tensors(f"{kind}:{name}", fn, [name] + extra)


def random_mutations(fixture: str, n: int) -> list[Mutation]:
    path = testdata.path("checkpoints", *fixture.split("/"))
    cfg = json.loads((path / "config.json").read_text())
    if (path / "model.safetensors").exists():
        names = sorted(safetensors.torch.load_file(path / "model.safetensors"))
    elif (path / "pytorch_model.bin").exists():
        names = sorted(torch.load(path / "pytorch_model.bin", weights_only=True))
    else:
        names = []
    rng = random.Random(f"mutations/{fixture}")
    out = []
    for _ in range(n):
        if rng.random() < 0.6 or not names:
            keys = rng.choice(config_fields(cfg))
            value = cfg[keys[0]] if len(keys) == 1 else cfg[keys[0]][keys[1]]
            out.append(set_field(keys, _tweak(value, rng)))
        else:
            out.append(tensor_mutation(rng.choice(names), rng.choice(["drop", "extra", "truncate", "int8", "bf16",
                                                                      "scale"])))
    return out


# ---------------------------------------------------------------------------------- the check
def reference(path, seq2seq: bool, expected):
    """transformers' logits for the checkpoint, or None if it cannot load every weight from it."""
    cls = transformers.MT5ForConditionalGeneration if seq2seq else transformers.AutoModelForCausalLM
    try:
        tm, info = cls.from_pretrained(path, dtype=torch.float32, attn_implementation="eager",
                                       output_loading_info=True)
    except Exception:  # transformers refuses it too
        return None
    if info.get("missing_keys") or info.get("mismatched_keys"):
        return None  # transformers would compute with random weights: a loader must refuse
    inputs = {k: torch.tensor(expected[k]) for k in ("input_ids", "attention_mask", "decoder_input_ids")
              if seq2seq or k == "input_ids"}
    try:
        with torch.no_grad():
            return tm.eval()(**inputs).logits.numpy()
    except Exception:  # the config makes transformers' forward pass fail: no number to agree with
        return None


@functools.partial(jax.jit, static_argnums=0)
def logits(model, params, batch):
    """Compiled once per distinct model: mutations that keep the config share it."""
    return model.logits(params, batch)


def check(fixture: str, mutation: Mutation, tmp_path) -> str:
    src = testdata.path("checkpoints", *fixture.split("/"))
    path = tmp_path / "ckpt"
    shutil.copytree(src, path)
    mutation.apply(path)
    expected = np.load(src / "expected.npz")
    seq2seq = "decoder_input_ids" in expected
    try:
        model, params = peft_jax.load_pretrained(path)
    except CheckpointError as e:
        assert any(n in str(e) for n in mutation.names), f"{mutation}: refused without naming it: {e}"
        return "refused"
    if fixture in SAME_WEIGHTS:
        ref_path = tmp_path / "reference"
        shutil.copytree(testdata.path("checkpoints", SAME_WEIGHTS[fixture]), ref_path)
        shutil.copy(path / "config.json", ref_path / "config.json")
        path = ref_path
    ref = reference(path, seq2seq, expected)
    assert ref is not None, f"{mutation}: loaded, but transformers cannot load every weight of it"
    batch = ({"encoder_input_tokens": jnp.asarray(expected["input_ids"]),
              "decoder_input_tokens": jnp.asarray(expected["decoder_input_ids"])} if seq2seq else
             {"decoder_input_tokens": jnp.asarray(expected["input_ids"])})
    ours = np.asarray(logits(model, params, batch))
    assert np.abs(ours - ref).max() <= TOL, f"{mutation}: logits differ from transformers by {np.abs(ours - ref).max()}"
    return "equal"


CASES = [(f, m) for f, n in FIXTURES.items() for m in random_mutations(f, n)]


@pytest.mark.parametrize("fixture,mutation", CASES, ids=[f"{f}-{m}" for f, m in CASES])
def test_random_mutation_is_refused_by_name_or_computed_like_transformers(fixture, mutation, tmp_path):
    check(fixture, mutation, tmp_path)


# The examples that used to load silently wrong, and one more of each kind; (fixture, mutation, outcome).
NAMED = [
    ("hf_mt5_safetensors", set_field(("tie_word_embeddings",), True), "equal"),  # lm_head in the file wins
    ("hf_llama_safetensors/transformers4",
     set_field(("rope_scaling",), {"type": "linear", "factor": 4.0}), "equal"),  # the older "type" key
    ("hf_llama_safetensors", set_field(("rope_parameters",), {"rope_type": "linear", "factor": 3.0,
                                                              "rope_theta": 1000.0}), "equal"),
    ("hf_llama_safetensors", set_field(("hidden_act",), "relu"), "equal"),
    ("hf_llama_safetensors", set_field(("hidden_act",), "gelu"), "equal"),  # exact GELU, not the tanh one
    ("hf_llama_safetensors", set_field(("hidden_act",), "tanh"), "refused"),
    ("hf_llama_safetensors", set_field(("rope_parameters",), {"rope_type": "dynamic", "factor": 2.0,
                                                              "rope_theta": 1000.0}), "refused"),
    ("hf_llama_safetensors", set_field(("attention_bias",), True), "refused"),
    ("hf_llama_safetensors", set_field(("some_new_switch",), 3), "refused"),
    ("hf_llama_safetensors", set_field(("quantization_config",), {"quant_method": "bitsandbytes"}), "refused"),
    ("hf_llama_safetensors", set_field(("num_hidden_layers",), 2), "refused"),  # fewer layers than the file
    ("hf_gemma2_safetensors", set_field(("num_hidden_layers",), 2), "refused"),
    ("hf_llama_safetensors", tensor_mutation("model.layers.1.mlp.up_proj.weight", "int8"), "refused"),
    ("hf_gemma2_safetensors", tensor_mutation("model.layers.0.self_attn.k_proj.weight", "extra"), "refused"),
    ("hf_llama_safetensors", tensor_mutation("model.layers.2.self_attn.o_proj.weight", "bf16"), "equal"),
]


@pytest.mark.parametrize("fixture,mutation,outcome", NAMED, ids=[f"{f}-{m}" for f, m, _ in NAMED])
def test_named_mutation(fixture, mutation, outcome, tmp_path):
    assert check(fixture, mutation, tmp_path) == outcome
