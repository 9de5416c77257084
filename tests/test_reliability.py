"""Reliability: SIGKILL at random moments loses nothing, broken checkpoints are set aside, a full disk
keeps earlier results. The 20-kill soak runs with `-m slow`."""

import errno
import os
import pathlib
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from peft_jax import peft
from peft_jax.models import safetensors_io as st
from peft_jax.train import checkpoints

ROOT = pathlib.Path(__file__).resolve().parents[1]
TRAIN = [sys.executable, str(ROOT / "launch" / "train.py"),
         "--config=configs/train.py:model=palm_tiny,peft=lora,source=tokens", "--config.num_steps=24",
         "--config.batch_size=8", "--config.checkpoint_every=3", "--config.keep_checkpoints=2",
         "--config.eval_every=0", "--config.data.input_length=16", "--config.data.num_examples=64",
         "--config.progress_bar=False", "--config.tensorboard=False"]


def _run(workdir, kill_after=None):
    """Runs training; with kill_after, SIGKILLs it after that many seconds. Returns True if it finished."""
    proc = subprocess.Popen(TRAIN + [f"--workdir={workdir}"], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        proc.wait(timeout=kill_after)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return False
    assert proc.returncode == 0, proc.stderr.read()[-3000:]
    return True


def _params(workdir):
    return jax.tree.map(np.asarray, peft.load(os.path.join(workdir, "final_module")).params)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("reference")
    start = time.time()
    assert _run(workdir)
    return _params(workdir), time.time() - start


def _kill_and_resume(workdir, reference, kills, rng):
    ref_params, duration = reference
    for _ in range(kills):
        # Anywhere from start-up to the end: during a step, a checkpoint save, or the final export.
        if _run(workdir, kill_after=rng.uniform(0.2, duration)):
            break
    while not _run(workdir):
        pass
    jax.tree.map(np.testing.assert_array_equal, ref_params, _params(workdir))


def test_sigkill_at_random_moments_resumes_to_bit_identical_params(reference, tmp_path):
    _kill_and_resume(tmp_path, reference, kills=2, rng=random.Random(0))


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(5))
def test_soak_twenty_sigkills_lose_nothing(reference, tmp_path, seed):
    _kill_and_resume(tmp_path, reference, kills=4, rng=random.Random(100 + seed))  # 5 × 4 = 20 kill points


def test_corrupted_latest_checkpoint_is_set_aside_and_the_previous_one_used(reference, tmp_path):
    assert _run(tmp_path)
    ckpt_dir = tmp_path / "checkpoints"
    latest = max(int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit())
    victim = max((p for p in (ckpt_dir / str(latest)).rglob("*") if p.is_file() and p.name != "checksums.json"),
                 key=lambda p: p.stat().st_size)
    victim.write_bytes(victim.read_bytes()[:-7])  # truncated, as by a crash or a full disk
    (tmp_path / "final_module").unlink()
    ckpts = checkpoints.Checkpoints(str(ckpt_dir), keep=2)
    with pytest.warns(checkpoints.CheckpointWarning, match=rf"step {latest} is unusable: .*{victim.name}"):
        previous = ckpts.latest_step()
    ckpts.close()
    assert previous < latest and any(p.name.startswith(f"corrupt_{latest}_") for p in ckpt_dir.iterdir())
    assert _run(tmp_path)  # resumes from the previous checkpoint and retrains the lost steps
    jax.tree.map(np.testing.assert_array_equal, reference[0], _params(tmp_path))


def test_checkpoint_without_manifest_counts_as_incomplete(tmp_path):
    step_dir = tmp_path / "7"
    step_dir.mkdir()
    (step_dir / "state").write_text("x")
    assert "missing (the save did not complete)" in checkpoints.verify(str(step_dir))
    checkpoints.write_manifest(str(step_dir))
    assert checkpoints.verify(str(step_dir)) is None


def test_full_disk_during_save_keeps_the_earlier_module(tmp_path, monkeypatch):
    from peft_jax.models import get_model

    model = get_model("palm_tiny")
    module = peft.init(model, peft.LoraConfig(rank=2), jax.random.PRNGKey(0))
    path = tmp_path / "m.peft"
    peft.save(path, module)
    before = path.read_bytes()

    def full_disk(tmp, tensors, metadata=None):
        with open(tmp, "wb") as f:
            f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(st, "write", full_disk)
    with pytest.raises(OSError, match="No space left on device"):
        peft.save(path, module.replace(params=jax.tree.map(lambda x: x + 1, module.params)), overwrite=True)
    assert path.read_bytes() == before  # the earlier file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["m.peft"]  # and no partial file is left behind
