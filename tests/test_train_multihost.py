"""Two workers started by the TPU launcher (`tpu.py run --simulate=2`: the per-worker command, joined through
the one distributed switch, gloo CPU collectives) train like one process."""

import pathlib
import subprocess
import sys

import jax
import numpy as np

from peft_jax import peft
from peft_jax.train import loop

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
