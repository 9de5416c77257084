"""Modules trained together (one vmapped step over a module axis) are the modules trained one at a time."""

import json

import jax
import numpy as np
import pytest

from peft_jax.train import config_lib, inputs, loop, together
from test_train_loop import _tiny_config

# Float32 products over K·B rows instead of B rows may round differently in the last bit; after a few
# optimizer steps that stays far below these bounds (measured: max |Δ| ≈ 1e-7).
RTOL, ATOL = 1e-5, 1e-6


def _configs(family="lora", seeds=(0, 1), **overrides):
    out = []
    for s in seeds:
        c = _tiny_config(family=family, tensorboard=False, eval_every=0, **overrides)
        c.seed = s
        out.append(c)
    return out


def _close(a, b):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=RTOL, atol=ATOL), a, b)


def _losses(workdir):
    with open(workdir / "metrics.jsonl") as f:
        return [r["loss"] for r in map(json.loads, f) if "loss" in r]


@pytest.mark.parametrize("family", ["lora", "prompt"])
def test_modules_trained_together_equal_the_same_modules_trained_one_at_a_time(tmp_path, family):
    configs = _configs(family)
    alone = [loop.train(c, tmp_path / f"alone_{i}") for i, c in enumerate(configs)]
    dirs = [tmp_path / f"together_{i}" for i in range(len(configs))]
    joint = together.train_together(configs, dirs)
    for a, j, d in zip(alone, joint, dirs):
        _close(a.module.params, j.module.params)
        np.testing.assert_allclose(_losses(d), _losses(tmp_path / d.name.replace("together", "alone")), rtol=1e-5)
        assert j.module.metadata["seed"] == a.module.metadata["seed"]
        assert (d / "final_module").exists() and (d / "loss_curve.png").exists()
    # The seeds give different modules (the test would pass trivially if every row saw module 0).
    diff = jax.tree.map(lambda x, y: float(np.max(np.abs(np.asarray(x) - np.asarray(y)))),
                        joint[0].module.params, joint[1].module.params)
    assert max(jax.tree.leaves(diff)) > 1e-3


class _Kill(Exception):
    pass


def test_a_killed_group_resumes_from_the_checkpoints_every_module_has(tmp_path, monkeypatch):
    configs = _configs(seeds=(0, 1))
    full = together.train_together(configs, [tmp_path / "full_0", tmp_path / "full_1"])
    make = inputs.make_iterator

    def dying(cfg, *args, **kwargs):
        it = make(cfg, *args, **kwargs)
        original_next = it.__class__.__next__
        count = {"n": 0}

        class Dying(it.__class__):
            def __next__(self):
                count["n"] += 1
                if count["n"] == 6:  # the 6th step's batch: the checkpoints of step 4 exist
                    raise _Kill("simulated kill")
                return original_next(self)

        it.__class__ = Dying
        return it

    dirs = [tmp_path / "killed_0", tmp_path / "killed_1"]
    monkeypatch.setattr(together.inputs, "make_iterator", dying)
    with pytest.raises(_Kill):
        together.train_together(configs, dirs)
    monkeypatch.setattr(together.inputs, "make_iterator", make)
    assert not (dirs[0] / "final_module").exists()
    resumed = together.train_together(configs, dirs)
    for f, r in zip(full, resumed):
        _close(f.module.params, r.module.params)
    # Each module's checkpoints are a plain training run's: one module continues alone with `train`.
    alone = loop.train(configs[1], tmp_path / "killed_1")
    _close(alone.module.params, full[1].module.params)


def test_configs_that_differ_outside_seed_and_data_are_refused_naming_the_field(tmp_path):
    a, b = _configs(seeds=(0, 1))
    b.peft.lora.rank = 2
    with pytest.raises(config_lib.ConfigError, match=r"config 1 has peft\.lora\.rank=2"):
        together.train_together([a, b], [tmp_path / "a", tmp_path / "b"])
    (sparse,) = _configs(family="sparse", seeds=(0,), **{"peft.sparse.dense_fraction": 0.5})
    with pytest.raises(config_lib.ConfigError, match="one at a time"):
        together.check_together([sparse])
    with pytest.raises(ValueError, match="its own workdir"):
        together.train_together([a, a], [tmp_path / "same", tmp_path / "same"])
