"""The experiment pipeline: end to end on the embedded default and on the real XL-Sum samples, resumable,
one run per workdir."""

import csv
import importlib.util
import os
import pathlib
import signal
import subprocess
import sys

import numpy as np
import pytest

from peft_jax import peft
from peft_jax.pipeline import experiment
from peft_jax.pipeline import multi_seed
from peft_jax.pipeline.runner import Stages, WorkdirLockedError, workdir_lock
from peft_jax.tree import flatten

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _config(name: str, arg: str = "runlocal", **overrides):
    spec = importlib.util.spec_from_file_location(f"cfg_{name}", ROOT / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(arg)
    for key, value in overrides.items():
        config[key] = value
    return config


# A smaller demo: one target and its related labeled language, two λ, two seeds.
SMALL = dict(target_languages=("syn_mod",), labeled_languages=("syn_en", "syn_mid"), lambdas=(0.5, 1.0), seeds=(0, 1))
SMALL_ARGS = ["--config.target_languages=('syn_mod',)", "--config.labeled_languages=('syn_en','syn_mid')",
              "--config.lambdas=(0.5,1.0)", "--config.seeds=(0,1)"]


def _rows(workdir):
    with open(os.path.join(workdir, "results.csv"), encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("demo"))
    logs = []
    rows = experiment.run(_config("demo", **SMALL), workdir, log=logs.append)
    return workdir, rows, logs


def test_demo_writes_the_results_table_and_plots(demo_run):
    """Each seed's directory is a complete one-seed run with its own table and plots."""
    workdir, rows, logs = demo_run
    workdir = os.path.join(workdir, "seed_0")
    table = _rows(workdir)
    assert [r["recipe"] for r in table] == ["task_only", "add", "weighted", "analogy", "stack", "multi_source"]
    assert {r["language"] for r in table} == {"syn_mod"}
    for column in ("language", "recipe", "rouge1", "rouge2", "rougeL", "rouge1_low", "rouge1_high",
                   "wrong_language_rate"):
        assert column in table[0]
    for r in table:
        assert float(r["rougeL_low"]) <= float(r["rougeL"]) <= float(r["rougeL_high"])
    for name in ("results.md", "results_by_language.png", "lambda_sweep.png"):
        assert os.path.getsize(os.path.join(workdir, name)) > 0
    md = open(os.path.join(workdir, "results.md"), encoding="utf-8").read()
    assert "| syn_mod | task_only |" in md and "λ sweeps" in md and "λ protocol: target_oracle" in md
    assert "## Module initialisation (shared_init=True)" in md and "| analogy_1/syn_mod |" in md
    meta = peft.load(os.path.join(workdir, "train", "lang_syn_mod", "final_module")).metadata
    assert meta["shared_init"] is True and meta["seed"] == meta["run_seed"] == 0
    preds = pathlib.Path(workdir, "predictions", "syn_mod.analogy.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(preds) == len([1 for _ in range(_config("demo").eval.n_test)])


def test_rerun_skips_every_finished_stage_and_keeps_results(demo_run):
    workdir, rows, _ = demo_run
    before = pathlib.Path(workdir, "results.csv").read_bytes()
    logs = []
    again = experiment.run(_config("demo", **SMALL), workdir, log=logs.append)
    ran = [line for line in logs if line.endswith(": running")]
    assert ran == [], f"stages redone: {ran}"
    assert again == rows and pathlib.Path(workdir, "results.csv").read_bytes() == before


@pytest.mark.slow  # a second whole two-seed run; the in-process stop and resume is in test_remote_pipeline.py
def test_killed_pipeline_resumes_to_identical_results(demo_run, tmp_path):
    """SIGKILL right after a module stage finished; the rerun redoes nothing finished, ends the same."""
    reference = pathlib.Path(demo_run[0], "results.csv").read_bytes()
    workdir = tmp_path / "killed"
    cmd = [sys.executable, str(ROOT / "launch" / "pipeline.py"), "--config=configs/demo.py:runlocal",
           f"--workdir={workdir}", *SMALL_ARGS]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if "lang/syn_mod: finished" in line:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for stage in ("data", "tokenizer", "base", "lang/syn_en", "lang/syn_mod"):
        assert f"[stage] {stage}: done earlier, skipped" in out.stdout
    assert (workdir / "results.csv").read_bytes() == reference


def test_second_run_on_the_same_workdir_is_refused(tmp_path):
    with workdir_lock(str(tmp_path)):
        with pytest.raises(WorkdirLockedError, match="in use by another pipeline run .*pid"):
            with workdir_lock(str(tmp_path)):
                pass
        out = subprocess.run([sys.executable, str(ROOT / "launch" / "pipeline.py"),
                              "--config=configs/demo.py:runlocal", f"--workdir={tmp_path}"], cwd=ROOT,
                             capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "is in use by another pipeline run" in out.stderr
    assert not (tmp_path / "stages" / "data.json").exists()


@pytest.mark.parametrize("name", ["xlsum_mt5", "xlsum_decoder"])
def test_real_xlsum_config_runlocal_runs_on_the_real_samples(name, tmp_path):
    config = _config(name, "runlocal,targets=marathi,labeled=english+hindi")
    rows = experiment.run(config, str(tmp_path), log=lambda _: None)
    assert {r["language"] for r in rows} == {"marathi"}
    assert {r["recipe"] for r in rows} == set(config.recipes)
    assert all(r["num_examples"] == 4 for r in rows)  # the 4 real marathi_test.jsonl articles
    assert (tmp_path / "train" / "task_english" / "final_module").is_file()


def test_resuming_with_another_config_is_refused(demo_run):
    workdir = demo_run[0]
    other = _config("demo", **{**SMALL, "lambdas": (0.25, 1.0)})
    with pytest.raises(experiment.ConfigMismatchError, match=r"another config \(differs in \['lambdas/0'"):
        experiment.run(other, workdir, log=lambda _: None)


def test_seeds_train_their_modules_together_and_each_equals_the_module_trained_alone(demo_run, tmp_path):
    """Each kind's modules of both seeds train in one step; one of them equals the same module trained alone."""
    workdir, rows, logs = demo_run
    assert any(line.startswith("[train] 4 lang module(s) together") and "seed 1 lang/syn_mod" in line
               for line in logs), logs
    assert sorted({r["seed"] for r in rows}) == [0, 1]
    seed_1 = Stages(os.path.join(workdir, "seed_1"), log=lambda _: None)
    config = multi_seed.seed_config(_config("demo", **SMALL), 1, os.path.join(workdir, "seed_0"))
    alone_file = experiment.train_module(config, str(tmp_path), "lang", "syn_mod", seed_1.result("data"),
                                         seed_1.result("tokenizer"), seed_1.result("base"))
    alone = peft.load(alone_file)
    joint = peft.load(os.path.join(workdir, "seed_1", "train", "lang_syn_mod", "final_module"))
    assert joint.metadata["seed"] == alone.metadata["seed"] == 1
    joint_leaves = flatten(joint.params)
    for path, leaf in flatten(alone.params).items():
        np.testing.assert_allclose(joint_leaves[path], leaf, rtol=1e-5, atol=1e-6, err_msg=path)
    for name in ("summary.csv", "results.md", "lambda_sweep.png", "results_by_language.png"):
        assert os.path.getsize(os.path.join(workdir, name)) > 0
