"""PEFT modules: separate pytrees that never touch the base, exact merges, files, HF peft interop."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import peft_jax
from peft_jax import peft
from peft_jax.models import get_model
from peft_jax.peft.core import TargetError
import hf_checkpoints as H

FAMILIES = {
    "lora": peft.LoraConfig(rank=4, targets=r".*(attention|mlp)/\w+"),
    "ia3": peft.IA3Config(),
    "adapter": peft.AdapterConfig(placement="houlsby", reduction_factor=8),
    "sparse": peft.SparseConfig(density=0.05),
    "prompt": peft.PromptConfig(length=3, init="vocab"),
}


def _batch(model, b=2):
    rng = np.random.default_rng(0)
    enc = rng.integers(2, 200, (b, 9))
    enc[1, 6:] = 0
    dec = rng.integers(2, 200, (b, 5))
    dec[:, 0] = 0
    if model.family == "decoder_only":
        return {"decoder_input_tokens": jnp.asarray(dec)}
    return {"encoder_input_tokens": jnp.asarray(enc), "decoder_input_tokens": jnp.asarray(dec)}


def _perturb(module, seed=1, scale=0.1):
    """The module with every float leaf moved away from its init (so merges are non-trivial)."""
    keys = iter(jax.random.split(jax.random.key(seed), len(jax.tree.leaves(module.params))))
    return module.replace(params=jax.tree.map(
        lambda x: x if x.dtype == jnp.int32 else x + scale * jax.random.normal(next(keys), x.shape), module.params))


@pytest.fixture(scope="module", params=["mt5_tiny", "palm_tiny"])
def base(request):
    model = get_model(request.param)
    return model, model.init(jax.random.key(0))


@pytest.mark.parametrize("family", ["lora", "ia3", "adapter", "sparse"])
def test_fresh_module_leaves_logits_unchanged(base, family):
    model, params = base
    module = peft.init(model, FAMILIES[family], jax.random.key(1), params=params)
    batch = _batch(model)
    np.testing.assert_array_equal(model.logits(params, batch, peft=module), model.logits(params, batch))


def test_fresh_prompt_only_changes_logits_through_the_prompt(base):
    # A prompt changes the input by construction, so "fresh == base" cannot hold; instead, a prompt whose
    # positions are masked out of attention must give the base output. The decoder sees the prompt causally,
    # so we check the encoder-decoder shapes and that the prompt reaches the output at all.
    model, params = base
    module = peft.init(model, FAMILIES["prompt"], jax.random.key(1), params=params)
    batch = _batch(model)
    out = model.logits(params, batch, peft=module)
    assert out.shape == model.logits(params, batch).shape
    assert not np.allclose(out, model.logits(params, batch))


@pytest.mark.parametrize("family", ["lora", "ia3", "sparse"])
def test_merged_equals_unmerged(base, family):
    model, params = base
    module = _perturb(peft.init(model, FAMILIES[family], jax.random.key(1), params=params))
    batch = _batch(model)
    unmerged = model.logits(params, batch, peft=module)
    merged = model.logits(peft.merge(params, module), batch)
    assert float(jnp.abs(merged - unmerged).max()) <= 1e-5 * float(jnp.abs(unmerged).max())


@pytest.mark.parametrize("family", list(FAMILIES))
def test_base_params_untouched_by_init_apply_and_merge_unmerge(base, family):
    model, params = base
    before = jax.tree.map(np.array, params)
    module = _perturb(peft.init(model, FAMILIES[family], jax.random.key(1), params=params))
    model.logits(params, _batch(model), peft=module)
    jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.array, params))
    if family in ("lora", "ia3", "sparse"):
        restored = peft.unmerge(peft.merge(params, module), module)
        assert jax.tree.structure(restored) == jax.tree.structure(params)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), before, restored)


def test_module_paths_mirror_base_paths(base):
    model, params = base
    base_paths = set(peft_jax.tree.flatten(params))
    lora = peft.init(model, FAMILIES["lora"], jax.random.key(1))
    for path in peft_jax.tree.flatten(lora.params):
        assert path.rsplit("/", 1)[0] + "/kernel" in base_paths
    sparse = peft.init(model, FAMILIES["sparse"], jax.random.key(1))
    for path in peft_jax.tree.flatten(sparse.params):
        assert path.rsplit("/", 1)[0] in base_paths


def test_stacked_loras_equal_the_merged_sum(base):
    model, params = base
    m1 = _perturb(peft.init(model, FAMILIES["lora"], jax.random.key(1)), seed=1)
    m2 = _perturb(peft.init(model, FAMILIES["lora"], jax.random.key(2)), seed=2)
    batch = _batch(model)
    stacked = model.logits(params, batch, peft=[m1, m2])
    merged = model.logits(peft.merge(peft.merge(params, m1), m2), batch)
    np.testing.assert_allclose(stacked, merged, atol=1e-5 * float(jnp.abs(merged).max()))


@pytest.mark.parametrize("family", ["lora", "ia3", "adapter", "prompt"])
def test_batched_module_row_b_equals_module_b_alone(base, family):
    model, params = base
    mods = [_perturb(peft.init(model, FAMILIES[family], jax.random.key(i), params=params), seed=i) for i in (1, 2)]
    batch = _batch(model)
    out = model.logits(params, batch, peft=peft.batch(mods))
    for b, m in enumerate(mods):
        row = jax.tree.map(lambda x: x[b:b + 1], batch)
        np.testing.assert_allclose(out[b:b + 1], model.logits(params, row, peft=m), atol=1e-5)


def test_count_reports_total_trainable_and_fraction(base):
    model, params = base
    r = 2
    module = peft.init(model, peft.LoraConfig(rank=r, targets=r".*attention/query"), jax.random.key(0))
    c = model.config
    hq = c.num_heads * getattr(c, "d_kv", getattr(c, "head_dim", None))
    n_query = len([p for p in peft_jax.tree.flatten(params) if p.endswith("attention/query/kernel")])
    expected = n_query * (c.d_model * r + r * hq)  # analytic: A [d, r] + B [r, heads*head_dim] per query kernel
    base_n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    counts = peft.count(params, module)
    assert counts == {"total": base_n + expected, "trainable": expected,
                      "fraction_trainable": expected / (base_n + expected)}


# ----------------------------------------------------------------------- files
def test_save_load_round_trip_is_bit_exact(base, tmp_path):
    model, params = base
    for family, cfg in FAMILIES.items():
        module = _perturb(peft.init(model, cfg, jax.random.key(1), params=params))
        meta = {"base_fingerprint": peft.fingerprint(params), "language": "sw", "steps": 3}
        path = tmp_path / f"{family}.peft"
        peft.save(path, module, meta)
        loaded = peft.load(path, base_params=params)
        assert loaded.config == module.config and loaded.metadata == {**module.metadata, **meta}
        jax.tree.map(np.testing.assert_array_equal, module.params, loaded.params)
        assert jax.tree.structure(loaded.params) == jax.tree.structure(module.params)


def test_save_refuses_to_overwrite(base, tmp_path):
    model, _ = base
    module = peft.init(model, FAMILIES["ia3"], jax.random.key(1))
    peft.save(tmp_path / "m", module)
    before = (tmp_path / "m").read_bytes()
    with pytest.raises(FileExistsError, match="already exists"):
        peft.save(tmp_path / "m", module.replace(params=jax.tree.map(lambda x: x * 2, module.params)))
    assert (tmp_path / "m").read_bytes() == before


def test_module_on_a_different_base_is_refused(base, tmp_path):
    model, params = base
    module = peft.init(model, FAMILIES["lora"], jax.random.key(1))
    peft.save(tmp_path / "m", module, {"base_fingerprint": peft.fingerprint(params)})
    other = model.init(jax.random.key(99))
    with pytest.raises(TargetError, match="trained on base .* fingerprint"):
        peft.load(tmp_path / "m", base_params=other)
    with pytest.raises(TargetError, match="trained on base"):
        peft.merge(other, peft.load(tmp_path / "m"))


def test_truncated_corrupt_and_future_module_files_are_refused(base, tmp_path):
    model, _ = base
    module = _perturb(peft.init(model, FAMILIES["lora"], jax.random.key(1)))
    path = tmp_path / "m"
    peft.save(path, module)
    raw = path.read_bytes()
    (tmp_path / "trunc").write_bytes(raw[:-50])
    with pytest.raises(peft.ModuleFileError, match="trunc: truncated"):
        peft.load(tmp_path / "trunc")
    flipped = bytearray(raw)
    flipped[-3] ^= 0xFF
    (tmp_path / "flip").write_bytes(bytes(flipped))
    with pytest.raises(peft.ModuleFileError, match="checksum mismatch"):
        peft.load(tmp_path / "flip")
    (tmp_path / "v9").write_bytes(raw.replace(b'"version":"1"', b'"version":"9"'))
    with pytest.raises(peft.ModuleFileError, match="unknown module format version '9'"):
        peft.load(tmp_path / "v9")
    with pytest.raises(peft.ModuleFileError, match="does not exist"):
        peft.load(tmp_path / "absent")


def test_bad_configs_are_refused(base):
    model, _ = base
    with pytest.raises(peft.PeftConfigError, match="rank must be >= 1, got 0"):
        peft.LoraConfig(rank=0)
    with pytest.raises(peft.PeftConfigError, match="prompt length.* must be >= 1, got -1"):
        peft.PromptConfig(length=-1)
    with pytest.raises(TargetError, match=r"(?s)matches no parameter path; available paths:\n.*attention/query"):
        peft.init(model, peft.LoraConfig(targets=r".*attn/q_proj"), jax.random.key(0))


# ------------------------------------------------------------------ HF peft interop
def _mt5_inputs():
    rng = np.random.default_rng(3)
    enc = rng.integers(2, 96, (2, 8))
    enc[1, 6:] = 0
    dec = rng.integers(2, 96, (2, 5))
    dec[:, 0] = 0
    return enc, dec


def test_exported_lora_loads_in_hf_peft_with_equal_logits(tmp_path):
    import peft as hf_peft

    tm = H.save_mt5(tmp_path / "base")
    model, params = peft_jax.load_pretrained(tmp_path / "base")
    cfg = peft.LoraConfig(rank=4, alpha=8, targets=r".*(attention|mlp)/(query|value|wo)")
    module = _perturb(peft.init(model, cfg, jax.random.key(0)), scale=0.3)
    peft.export_hf(tmp_path / "adapter", module, str(tmp_path / "base"), model)
    pm = hf_peft.PeftModel.from_pretrained(tm, str(tmp_path / "adapter")).eval()
    enc, dec = _mt5_inputs()
    with torch.no_grad():
        ref = pm(input_ids=torch.tensor(enc), attention_mask=torch.tensor(enc != 0),
                 decoder_input_ids=torch.tensor(dec)).logits.numpy()
    ours = np.asarray(model.logits(params, {"encoder_input_tokens": jnp.asarray(enc),
                                            "decoder_input_tokens": jnp.asarray(dec)}, peft=module))
    base_out = np.asarray(model.logits(params, {"encoder_input_tokens": jnp.asarray(enc),
                                                "decoder_input_tokens": jnp.asarray(dec)}))
    assert np.abs(ours - base_out).max() > 1e-2  # the LoRA really changes the output
    assert np.abs(ours - ref).max() <= 1e-4


def test_hf_peft_lora_imports_with_equal_logits(tmp_path):
    import peft as hf_peft

    tm = H.save_llama(tmp_path / "base")
    model, params = peft_jax.load_pretrained(tmp_path / "base")
    config = hf_peft.LoraConfig(r=3, lora_alpha=5, use_rslora=True, target_modules=["q_proj", "down_proj", "o_proj"])
    pm = hf_peft.get_peft_model(tm, config)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_B" in name:
                p.copy_(0.3 * torch.randn_like(p))
    pm.save_pretrained(tmp_path / "adapter")
    module = peft.import_hf(str(tmp_path / "adapter"), model)
    assert module.config.rank == 3 and module.config.rslora
    toks = np.random.default_rng(0).integers(2, 80, (2, 7))
    with torch.no_grad():
        ref = pm.eval()(input_ids=torch.tensor(toks)).logits.numpy()
    ours = np.asarray(model.logits(params, {"decoder_input_tokens": jnp.asarray(toks)}, peft=module))
    assert np.abs(ours - ref).max() <= 1e-4


@pytest.mark.parametrize("family", ["prompt", "lora", "adapter"])
def test_cached_decoding_equals_full_logits_with_a_module(family):
    """The KV-cached path (decode_init + decode_step) sees a module exactly as model.logits does."""
    model = get_model("palm_tiny")
    params = model.init(jax.random.key(0))
    module = _perturb(peft.init(model, FAMILIES[family], jax.random.key(1), params=params))
    toks = jnp.asarray(np.random.default_rng(0).integers(2, 200, (2, 6)))
    full = model.logits(params, {"decoder_input_tokens": toks}, peft=module)
    state = model.decode_init(params, {"decoder_input_tokens": toks}, 8, peft=module)
    first, state = model.decode_step(params, state, toks[:, :4], peft=module)
    rest, _ = model.decode_step(params, state, toks[:, 4:], peft=module)
    np.testing.assert_allclose(jnp.concatenate([first, rest], axis=1), full, atol=1e-4)
