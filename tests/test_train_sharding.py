"""The same run on 1 CPU device and on 8 forced CPU devices (data x fsdp x model meshes) agrees."""

import importlib.util
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import numpy as np

from peft_jax import peft
from peft_jax.train import loop

ROOT = pathlib.Path(__file__).resolve().parents[1]
# name: (model, PEFT family, (data, fsdp, model) mesh, PEFT sharding)
RUNS = {"mt5_lora": ("mt5_tiny", "lora", (2, 2, 2), "logical"), "palm_ia3": ("palm_tiny", "ia3", (1, 4, 2), "replicated")}

# Runs in a fresh interpreter: the device count is fixed when jax starts.
SCRIPT = textwrap.dedent("""
    import os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import jax, numpy as np
    sys.path.insert(0, {tests!r})
    from test_train_sharding import RUNS, tiny_config
    from peft_jax import peft
    from peft_jax.models import get_model
    from peft_jax.train import loop, partitioning
    assert len(jax.devices()) == 8, jax.devices()
    out = sys.argv[1]
    for name, (model, family, (d, f, m), peft_sharding) in RUNS.items():
        config = tiny_config(model, family, data=d, fsdp=f, model_axis=m, peft_sharding=peft_sharding)
        result = loop.train(config, os.path.join(out, name))
        emb = result.params["token_embedder"]["embedding"]
        # vocab -> model, embed -> fsdp: the base really is split over the mesh.
        want = jax.sharding.PartitionSpec("model" if m > 1 else None, "fsdp" if f > 1 else None)
        assert emb.sharding.spec == want, (name, emb.sharding.spec, want)
        assert len({{s.device for s in emb.addressable_shards}}) == 8
        if peft_sharding == "logical":  # LoRA A is [embed, rank]: split like the base's embed dimension
            mesh = partitioning.make_mesh({{"data": d, "fsdp": f, "model": m}})
            shardings = partitioning.peft_shardings(result.model, result.module, mesh, mode="logical")
            spec = shardings.params["encoder"]["layers_0"]["attention"]["query"]["lora_a"].spec
            assert spec == jax.sharding.PartitionSpec("fsdp", None), spec
        base = get_model(model).init(jax.random.PRNGKey(0))
        jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), base, result.params)
    # A Hugging Face checkpoint is read straight into the same sharding, values untouched.
    from hf_checkpoints import save_llama
    from peft_jax import load_pretrained
    save_llama(os.path.join(out, "llama_hf"))
    config = tiny_config("palm_tiny", "lora", data=2, fsdp=2, model_axis=2)
    config.model.checkpoint, config.num_steps = os.path.join(out, "llama_hf"), 2
    result = loop.train(config, os.path.join(out, "llama_run"))
    emb = result.params["token_embedder"]["embedding"]
    assert emb.sharding.spec == jax.sharding.PartitionSpec("model", "fsdp"), emb.sharding.spec
    _, reference = load_pretrained(os.path.join(out, "llama_hf"))
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), reference, result.params)
    try:
        loop.train(tiny_config("palm_tiny", "lora", data=4, fsdp=1, model_axis=2, batch_size=6), os.path.join(out, "bad"))
        raise SystemExit("a batch of 6 on 4 data shards was accepted")
    except partitioning.MeshError as e:
        assert "batch_size=6" in str(e) and "multiple of 4" in str(e), e
    print("SHARDED-OK")
""")


def tiny_config(model, family, data=1, fsdp=1, model_axis=1, batch_size=8, peft_sharding="replicated"):
    spec = importlib.util.spec_from_file_location("train_config", ROOT / "configs" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config(f"model={model},peft={family},source=tokens")
    c.num_steps, c.batch_size, c.checkpoint_every, c.eval_every = 3, batch_size, 3, 0
    c.data.input_length, c.data.num_examples = 16, 32
    c.progress_bar, c.tensorboard = False, False
    c.mesh.data, c.mesh.fsdp, c.mesh.model = data, fsdp, model_axis
    c.peft.sharding = peft_sharding
    return c


def _close(actual, desired, rtol):
    desired = np.asarray(desired)
    np.testing.assert_allclose(np.asarray(actual), desired, rtol=rtol, atol=rtol * float(np.abs(desired).max()))


def test_eight_devices_with_data_fsdp_model_meshes_give_the_one_device_params(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT.format(tests=str(ROOT / "tests")), str(tmp_path / "eight")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0 and "SHARDED-OK" in proc.stdout, proc.stderr[-4000:]
    assert len(jax.devices()) == 1
    for name, (model, family, _, _) in RUNS.items():
        one = loop.train(tiny_config(model, family), tmp_path / "one" / name)
        eight = peft.load(tmp_path / "eight" / name / "final_module", base_params=one.params)
        assert eight.metadata["base_fingerprint"] == one.module.metadata["base_fingerprint"]
        moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()),
                             one.module.params, peft.init(one.model, one.module.config, jax.random.PRNGKey(0),
                                                          params=one.params).params)
        assert max(jax.tree.leaves(moved)) > 1e-3  # training moved the module, so agreement is not vacuous
        jax.tree.map(lambda a, b: _close(a, b, rtol=1e-4), eight.params, one.module.params)
