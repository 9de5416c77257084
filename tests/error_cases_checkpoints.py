"""Bad-input cases of the catalogue: checkpoint formats and configs."""

from __future__ import annotations

import json
import shutil
import struct

from error_case_registry import case, expect, tiny  # noqa: F401


def _fixture(tmp, name="hf_llama_safetensors"):
    """A copy of an upstream-written fixture checkpoint to break."""
    import testdata

    path = tmp / "ckpt"
    shutil.copytree(testdata.path("checkpoints", name), path, ignore=shutil.ignore_patterns("transformers4"))
    return path


def _edit_config(path, **changes):
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(changes)
    (path / "config.json").write_text(json.dumps(cfg))


def _edit_tensors(path, fn):
    import safetensors.numpy

    tensors = safetensors.numpy.load_file(str(path / "model.safetensors"))
    fn(tensors)
    safetensors.numpy.save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})


def _load(path, **kw):
    import peft_jax

    return peft_jax.load_pretrained(path, **kw)


@case("checkpoint", "safetensors header whose offsets are shorter than the tensor")
def _ckpt_short_offsets(tmp):
    path = _fixture(tmp)
    raw = (path / "model.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    header["model.norm.weight"]["data_offsets"][1] -= 4
    blob = json.dumps(header, separators=(",", ":")).encode().ljust(n)  # same header length, so the data stays in place
    (path / "model.safetensors").write_bytes(raw[:8] + blob + raw[8 + n:])
    return expect(ValueError, _load, path)


@case("checkpoint", "index listing a tensor its shard lacks")
def _ckpt_index_lacks(tmp):
    path = _fixture(tmp)
    (path / "model.safetensors").rename(path / "model-00001-of-00001.safetensors")
    import safetensors

    with safetensors.safe_open(str(path / "model-00001-of-00001.safetensors"), "np") as f:
        names = list(f.keys())
    weight_map = {n: "model-00001-of-00001.safetensors" for n in names + ["model.layers.3.mlp.up_proj.weight"]}
    (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return expect(ValueError, _load, path)


@case("checkpoint", "int8-quantized tensor with its scale beside it")
def _ckpt_int8(tmp):
    import numpy as np

    path = _fixture(tmp)

    def quantize(t):
        w = t["model.layers.0.mlp.up_proj.weight"]
        scale = np.abs(w).max() / 127
        t["model.layers.0.mlp.up_proj.weight"] = np.round(w / scale).astype(np.int8)
        t["model.layers.0.mlp.up_proj.weight_scale"] = np.array([scale], np.float32)
    _edit_tensors(path, quantize)
    return expect(ValueError, _load, path)


@case("checkpoint", "a tensor the model does not use")
def _ckpt_unused(tmp):
    path = _fixture(tmp)
    _edit_tensors(path, lambda t: t.update({"model.layers.0.self_attn.q_norm.weight": t["model.norm.weight"]}))
    return expect(ValueError, _load, path)


@case("checkpoint", "config.json with fewer layers than the file")
def _ckpt_fewer_layers(tmp):
    path = _fixture(tmp)
    _edit_config(path, num_hidden_layers=2)
    return expect(ValueError, _load, path)


@case("checkpoint", "config.json field the loader does not know")
def _ckpt_unknown_field(tmp):
    path = _fixture(tmp)
    _edit_config(path, attn_temperature=0.5)
    return expect(ValueError, _load, path)


@case("checkpoint", "rope scaling type that is not implemented")
def _ckpt_rope_type(tmp):
    path = _fixture(tmp)
    _edit_config(path, rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 1000.0})
    return expect(ValueError, _load, path)


@case("checkpoint", "hidden_act that is not implemented")
def _ckpt_hidden_act(tmp):
    path = _fixture(tmp)
    _edit_config(path, hidden_act="quick_gelu")
    return expect(ValueError, _load, path)


@case("checkpoint", "t5x checkpoint without a model description")
def _ckpt_t5x_no_model(tmp):
    return expect(ValueError, _load, _fixture(tmp, "t5x_mt5_legacy"))
