"""Two workers started by the TPU launcher (`tpu.py run --simulate=2`: the per-worker command, joined through
the one distributed switch, gloo CPU collectives) train like one process, alone (launch/train.py) and as
pipeline stages (launch/pipeline.py, whose process 0 alone writes markers and results)."""

import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from peft_jax import peft
from peft_jax.train import inputs, loop

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from test_train_sharding import tiny_config  # noqa: E402  (same tiny run as the sharding test)

# tiny_config("palm_tiny", "lora", data=1, fsdp=2, model_axis=2) as flags of launch/train.py: with 2 CPU devices
# per worker, the global mesh (fsdp=2, model=2) splits the base and the batch across the two processes.
TINY = ("--config=configs/train.py:model=palm_tiny,peft=lora,source=tokens --config.num_steps=3 "
        "--config.batch_size=8 --config.checkpoint_every=3 --config.eval_every=0 --config.data.input_length=16 "
        "--config.data.num_examples=32 --config.progress_bar=False --config.tensorboard=False "
        "--config.mesh.data=1 --config.mesh.fsdp=2 --config.mesh.model=2")


def test_two_simulated_tpu_workers_give_the_params_of_one_process(tmp_path):
    launcher = [sys.executable, str(ROOT / "launch" / "tpu" / "tpu.py"), "run", "--simulate=2", "--simulate_devices=2",
                f"--log_dir={tmp_path / 'logs'}", f"--command=launch/train.py {TINY} --workdir={tmp_path / 'two'}"]
    proc = subprocess.run(launcher, cwd=ROOT, capture_output=True, text=True, timeout=900)
    logs = {i: (tmp_path / "logs" / f"worker-{i}.log").read_text() for i in range(2)}
    assert proc.returncode == 0, f"{proc.stderr}\nworker 0:\n{logs[0][-3000:]}\nworker 1:\n{logs[1][-3000:]}"
    assert "final module:" in logs[0]
    # Process 0 alone wrote the metrics and the final module; the checkpoint holds both data positions.
    assert (tmp_path / "two" / "final_module").is_file()
    data_dir = tmp_path / "two" / "checkpoints" / "3" / "data"
    assert {p.name for p in data_dir.glob("process_*.json")} == {"process_0-of-2.json", "process_1-of-2.json"}
    one = loop.train(tiny_config("palm_tiny", "lora"), tmp_path / "one")
    two = peft.load(tmp_path / "two" / "final_module", base_params=one.params)  # same base fingerprint
    fresh = peft.init(one.model, one.module.config, jax.random.PRNGKey(0))
    assert max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
               for a, b in zip(jax.tree.leaves(one.module.params), jax.tree.leaves(fresh.params))) > 1e-3
    for a, b in zip(jax.tree.leaves(two.params), jax.tree.leaves(one.module.params)):
        b = np.asarray(b)
        np.testing.assert_allclose(np.asarray(a), b, rtol=1e-4, atol=1e-4 * float(np.abs(b).max()))


# configs/demo.py:runlocal cut to the fewest stages of each kind on a 1+1-layer base: the source as the only
# target and labeled language (lang/syn_en and task/syn_en, 2 steps each), a random base, two test articles,
# the task_only recipe (no λ selection).
PIPELINE = ("--config=configs/demo.py:runlocal \"--config.target_languages=('syn_en',)\" "
            "\"--config.labeled_languages=('syn_en',)\" \"--config.recipes=('task_only',)\" "
            "--config.base.pretrain.steps=0 --config.base.pretrain.overrides.num_layers=1 "
            "--config.base.pretrain.overrides.num_decoder_layers=1 --config.base.pretrain.overrides.d_model=32 "
            "--config.base.pretrain.overrides.d_ff=64 --config.base.pretrain.overrides.d_kv=8 "
            "--config.lang_train.num_steps=2 --config.task_train.num_steps=2 --config.lang_train.batch_size=8 "
            "--config.task_train.batch_size=8 --config.world.n_test=2 --config.eval.n_test=2 "
            "--config.eval.bootstrap_samples=10")


def _pipeline_config():
    """The config the workers got from PIPELINE's flags."""
    import ast
    import importlib.util
    import shlex

    spec = importlib.util.spec_from_file_location("_demo_cfg", ROOT / "configs" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("runlocal")
    for flag in shlex.split(PIPELINE)[1:]:
        *parents, leaf = flag[len("--config."):].split("=", 1)[0].split(".")
        target = config
        for p in parents:
            target = target[p]
        target[leaf] = ast.literal_eval(flag.split("=", 1)[1])
    return config


class _Concat:
    """One process's iterator over the global batches that two processes' shards make together."""

    def __init__(self, halves):
        self.halves = halves

    def __next__(self):
        batches = [next(h) for h in self.halves]
        return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}

    def get_state(self):
        return {"halves": [h.get_state() for h in self.halves]}

    def set_state(self, state):
        for h, s in zip(self.halves, state["halves"]):
            h.set_state(s)


def _as_two_shards(make_iterator):
    """`inputs.make_iterator` whose training batches are the two shards of two processes, concatenated: the
    record-based sources give each process its own shard of the records, so two processes see other global
    batches than one process reading them all."""
    def make(cfg, model, objective, tok, shard, split, seed):
        if split != "train":
            return make_iterator(cfg, model, objective, tok, shard, split, seed)
        n = shard.global_batch_size // 2
        return _Concat([make_iterator(cfg, model, objective, tok, inputs.Shard(slice(i * n, (i + 1) * n),
                                                                                 shard.global_batch_size), split, seed)
                        for i in range(2)])
    return make


@pytest.mark.slow  # about twice the train.py test above (two training stages, decoding, a reference run)
def test_a_pipeline_on_two_simulated_workers_writes_once_and_trains_its_modules_like_one_process(tmp_path,
                                                                                               monkeypatch):
    from peft_jax.pipeline import experiment, runner

    workdir = tmp_path / "two"
    launcher = [sys.executable, str(ROOT / "launch" / "tpu" / "tpu.py"), "run", "--simulate=2", "--simulate_devices=1",
                f"--log_dir={tmp_path / 'logs'}", f"--command=launch/pipeline.py {PIPELINE} --workdir={workdir}"]
    proc = subprocess.run(launcher, cwd=ROOT, capture_output=True, text=True, timeout=900)
    logs = {i: (tmp_path / "logs" / f"worker-{i}.log").read_text() for i in range(2)}
    assert proc.returncode == 0, f"{proc.stderr}\nworker 0:\n{logs[0][-3000:]}\nworker 1:\n{logs[1][-3000:]}"
    # Process 0 alone ran the single-process stages, wrote the markers and the results; both trained.
    assert "[stage] lang/syn_en: running" in logs[0] and "[stage]" not in logs[1]
    assert (workdir / "results.csv").is_file() and (workdir / "stages" / "evaluate__syn_en.json").is_file()
    stages = runner.Stages(str(workdir), log=lambda _: None)
    paths, tok, base = (stages.result(name) for name in ("data", "tokenizer", "base"))
    two = peft.load(stages.result("lang/syn_en"))
    config = _pipeline_config()
    experiment._world(config)  # registers the synthetic languages, as a pipeline run does
    monkeypatch.setattr(inputs, "make_iterator", _as_two_shards(inputs.make_iterator))
    one_path = experiment.train_module(config, str(tmp_path / "one"), "lang", "syn_en", paths, tok, base)
    one = peft.load(one_path)
    assert two.metadata["base_fingerprint"] == one.metadata["base_fingerprint"]
    for a, b in zip(jax.tree.leaves(two.params), jax.tree.leaves(one.params)):
        b = np.asarray(b)
        np.testing.assert_allclose(np.asarray(a), b, rtol=1e-4, atol=1e-4 * float(np.abs(b).max()))
