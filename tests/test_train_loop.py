"""The training loop: exact resume, LT-SFT phases, clear errors, the command line and its outputs."""

import importlib.util
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from peft_jax import peft
from peft_jax.models import get_model
from peft_jax.train import config_lib, inputs, loop, partitioning, reporting

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _config_module():
    spec = importlib.util.spec_from_file_location("train_config", ROOT / "configs" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tiny_config(model="palm_tiny", family="lora", **overrides):
    """A seconds-long run on the in-memory memorisable task."""
    c = _config_module().get_config(f"model={model},peft={family},source=tokens")
    c.num_steps, c.batch_size, c.checkpoint_every, c.keep_checkpoints = 6, 8, 2, 2
    c.eval_every, c.eval_steps, c.log_every = 3, 1, 1
    c.data.input_length, c.data.num_examples, c.data.eval_examples = 16, 32, 8
    c.progress_bar = False
    c.peft.sparse.density = 0.05
    for key, value in overrides.items():
        target = c
        *parents, leaf = key.split(".")
        for p in parents:
            target = target[p]
        target[leaf] = value
    return c


class _Crash(Exception):
    pass


def _crash_at(step):
    def hook(done, metrics):
        if done == step:
            raise _Crash(f"simulated kill after step {done}")
    return hook


def _assert_same(a, b):
    leaves = jax.tree.map(lambda x, y: np.array_equal(np.asarray(x), np.asarray(y)), a, b)
    assert all(jax.tree.leaves(leaves))


def test_killed_run_resumes_from_its_checkpoint_to_bit_identical_params(tmp_path):
    # LT-SFT with a dense phase of 3 steps: the kill after step 3 leaves the dense-phase checkpoint of
    # step 2, so the resumed run restores it and then makes the top-k selection itself.
    config = _tiny_config(family="sparse", tensorboard=False, eval_every=0, **{"peft.sparse.dense_fraction": 0.5})
    full = loop.train(config, tmp_path / "full")
    with pytest.raises(_Crash):
        loop.train(config, tmp_path / "killed", hooks=[_crash_at(3)])
    assert sorted(os.listdir(tmp_path / "killed" / "checkpoints")) == ["2"]
    assert not (tmp_path / "killed" / "final_module").exists()
    resumed = loop.train(config, tmp_path / "killed")
    _assert_same(full.module.params, resumed.module.params)
    assert resumed.module.config == full.module.config == peft.SparseConfig(density=0.05)
    # The selected module has exactly the entries a fresh module of that density has.
    fresh = peft.init(resumed.model, resumed.module.config, jax.random.PRNGKey(0))
    assert jax.tree.structure(fresh.params) == jax.tree.structure(resumed.module.params)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a.shape, b.shape), fresh.params, resumed.module.params)


def test_run_writes_metrics_eval_loss_tensorboard_plot_and_a_loadable_final_module(tmp_path):
    result = loop.train(_tiny_config(), tmp_path)
    records = reporting.read_metrics(str(tmp_path))
    assert sorted(records) == list(range(0, 7))
    assert records[0]["params_trainable"] == peft.count(result.params, result.module)["trainable"]
    for key in ("loss", "learning_rate", "grad_norm", "tokens_per_sec", "step_time"):
        assert np.isfinite(records[6][key]), key
    assert "eval_loss" in records[3] and "eval_loss" in records[6]
    assert records[6]["loss"] < records[1]["loss"]
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["4", "6"]  # keep_checkpoints=2
    assert any(name.startswith("events") for name in os.listdir(tmp_path / "tensorboard"))
    assert (tmp_path / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    module = peft.load(tmp_path / "final_module", base_params=result.params)
    _assert_same(module.params, result.module.params)
    assert module.metadata["base_fingerprint"] == peft.fingerprint(result.params)


class _PoisonAt:
    """Delegates to a batch iterator; the batch of step `step` gets a NaN loss weight."""

    def __init__(self, it, step):
        self.it, self.step = it, step

    def __next__(self):
        batch = next(self.it)
        if self.it.position == self.step:
            batch["decoder_loss_weights"] = batch["decoder_loss_weights"].copy()
            batch["decoder_loss_weights"][0, 0] = np.nan
        return batch

    def get_state(self):
        return self.it.get_state()

    def set_state(self, state):
        self.it.set_state(state)


def test_nan_loss_stops_the_run_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    config = _tiny_config(tensorboard=False)
    model = get_model("palm_tiny")
    feats = inputs.memorisable_features(model.family, "causal_lm", num_examples=32, length=16,
                                        vocab_size=model.config.vocab_size)
    poisoned = _PoisonAt(inputs.ArrayIterator(feats, 8), step=5)
    with pytest.raises(loop.NonFiniteLossError, match="step 5"):
        loop.train(config, tmp_path, train_iter=poisoned)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "4"]
    assert not (tmp_path / "final_module").exists()


def test_unknown_config_field_names_the_close_ones():
    argv = ["launch/train.py", f"--config={ROOT / 'configs' / 'train.py'}:model=mt5_tiny",
            "--config.optimizer.learning_rat=0.1"]
    with pytest.raises(config_lib.ConfigError, match="optimizer.learning_rate"):
        config_lib.check_overrides(argv)
    config_lib.check_overrides(argv[:2] + ["--config.optimizer.learning_rate=0.1"])
    config = _tiny_config()
    config.unlock()
    config.data.nosie_density = 0.3
    with pytest.raises(config_lib.ConfigError, match="data.noise_density"):
        config_lib.check_fields(config, _tiny_config())


def test_bad_mesh_batch_and_workdir_are_clear_errors(tmp_path):
    with pytest.raises(partitioning.MeshError, match="3 does not divide 8"):
        partitioning.mesh_shape({"data": 3, "fsdp": 1, "model": 1}, 8)
    with pytest.raises(partitioning.MeshError, match="uses 4 devices, but there are 8"):
        partitioning.mesh_shape({"data": 2, "fsdp": 2, "model": 1}, 8)
    assert partitioning.mesh_shape({"data": -1, "fsdp": 2, "model": 2}, 8) == (2, 2, 2)
    with pytest.raises(partitioning.MeshError, match="1 does not divide|needs a multiple of 2"):
        loop.train(_tiny_config(**{"mesh.data": 2}), tmp_path / "mesh")
    with pytest.raises(partitioning.MeshError, match="micro_batches=3"):
        loop.train(_tiny_config(micro_batches=3), tmp_path / "batch")
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(loop.WorkdirError, match="not writable"):
        loop.train(_tiny_config(), blocker / "run")


def test_command_line_run_leaves_a_final_module_for_its_base(tmp_path):
    workdir = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "launch" / "train.py"),
           "--config=configs/train.py:model=mt5_tiny,peft=lora,objective=span_corruption",
           "--config.num_steps=4", "--config.checkpoint_every=2", "--config.data.num_examples=200",
           "--config.eval_every=0", f"--workdir={workdir}"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    module = peft.load(workdir / "final_module")
    assert module.family == "lora" and module.metadata["objective"] == "span_corruption"
    # The base is re-created from the config (preset, trained tokenizer's vocabulary, init seed).
    from peft_jax.data import load_tokenizer
    tok = load_tokenizer(workdir / "tokenizer.model")
    model = get_model("mt5_tiny", vocab_size=tok.vocab_size)
    params = model.init(jax.random.PRNGKey(0))
    peft.load(workdir / "final_module", base_params=params)  # raises if the fingerprint differs
    bad = subprocess.run(cmd[:3] + ["--config.optimizer.learning_rat=1", f"--workdir={workdir}"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert bad.returncode != 0 and "optimizer.learning_rate" in bad.stderr and "Traceback" not in bad.stderr


def _from_dict(config, **changes):
    """`config` rebuilt from a plain dict with `changes` (dotted keys), as a config read from JSON would be:
    ml_collections' own type checks do not see these values."""
    import ml_collections

    d = config.to_dict()
    for key, value in changes.items():
        *parents, leaf = key.split(".")
        target = d
        for p in parents:
            target = target[p]
        target[leaf] = value
    return ml_collections.ConfigDict(d)


@pytest.mark.parametrize("field, value, message", [
    ("optimizer.learning_rate", float("nan"), "optimizer.learning_rate must be a finite number in (0, inf), got nan"),
    ("optimizer.learning_rate", float("inf"), "optimizer.learning_rate must be a finite number in (0, inf), got inf"),
    ("num_steps", 0, "num_steps must be >= 1, got 0"),
    ("num_steps", "3", "num_steps must be an integer, got '3' (str)"),
    ("batch_size", True, "batch_size must be an integer, got True (bool)"),
    ("model.dtype", "int32", "model.dtype='int32' is not a floating-point dtype"),
    ("model.dtype", "bool", "model.dtype='bool' is not a floating-point dtype"),
    ("optimizer.b2", 1.0, "optimizer.b2 must be a finite number in [0, 1), got 1.0"),
    ("data.noise_density", float("nan"), "data.noise_density must be a finite number in (0, 1), got nan"),
])
def test_training_config_values_are_refused_by_type_and_range_naming_the_field(field, value, message, tmp_path):
    with pytest.raises(config_lib.ConfigError) as e:
        loop.train(_from_dict(_tiny_config(), **{field: value}), tmp_path)
    assert message in str(e.value)
    assert not (tmp_path / "checkpoints").exists()


def test_a_step_that_makes_the_module_non_finite_is_never_saved_and_names_the_step(tmp_path):
    # learning_rate=1e39 passes the config check (a finite float) but overflows float32: the first update
    # turns the module to NaN although that step's loss and gradient were finite.
    config = _tiny_config(num_steps=2, checkpoint_every=1, tensorboard=False, eval_every=0,
                          **{"optimizer.learning_rate": 1e39})
    with pytest.raises(loop.NonFiniteLossError, match=r"step 1 made the module's parameters non-finite \(layers_0/"):
        loop.train(config, tmp_path)
    assert os.listdir(tmp_path / "checkpoints") == []  # not even as the "last good" checkpoint
    assert not (tmp_path / "final_module").exists()
