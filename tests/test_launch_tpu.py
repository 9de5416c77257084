"""The TPU launcher prints exactly the gcloud commands it would run (--dry_run), and runs none."""

import subprocess
import sys
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
TPU = ROOT / "launch" / "tpu" / "tpu.py"


def _dry(*argv):
    out = subprocess.run([sys.executable, str(TPU), *argv, "--dry_run"], capture_output=True, text=True, check=True,
                         env={"PATH": "/nonexistent"})  # no gcloud on PATH: a dry run must not call it
    return out.stdout.strip().splitlines()


def test_dry_run_create_pod_slice_prints_the_gcloud_command():
    assert _dry("create", "--name=pj", "--zone=us-central2-b", "--accelerator=v4-32", "--spot") == [
        "gcloud compute tpus tpu-vm create pj --zone=us-central2-b --accelerator-type=v4-32 "
        "--version=tpu-ubuntu2204-base --spot"]


def test_dry_run_setup_copies_and_installs_on_all_workers():
    copy, install = _dry("setup", "--name=pj", "--zone=z", "--project=p")
    assert copy == "gcloud compute tpus tpu-vm scp --recurse . 'pj:~/peft_jax' --zone=z --project=p --worker=all"
    assert install.startswith("gcloud compute tpus tpu-vm ssh pj --zone=z --project=p --worker=all '--command=cd ")
    assert '.venv/bin/pip install -q -e . "jax[tpu]==0.10.2"' in install


def test_dry_run_run_starts_the_stage_on_every_worker_distributed():
    (cmd,) = _dry("run", "--name=pj", "--zone=z", "--command=launch/pipeline.py --config=configs/xlsum_mt5.py:size=xl "
                  "--workdir=gs://b/run")
    assert "--worker=all" in cmd
    assert cmd.endswith("--config=configs/xlsum_mt5.py:size=xl --workdir=gs://b/run --config.distributed=True'")


def test_dry_run_fetch_and_delete():
    assert _dry("fetch", "--name=pj", "--zone=z", "--remote=runs/a", "--local=out") == [
        "gcloud compute tpus tpu-vm scp --recurse 'pj:~/peft_jax/runs/a' out --zone=z --worker=0"]
    assert _dry("delete", "--name=pj", "--zone=z") == ["gcloud compute tpus tpu-vm delete pj --zone=z --quiet"]


def test_run_without_command_is_a_clear_error():
    out = subprocess.run([sys.executable, str(TPU), "run", "--name=pj", "--zone=z", "--dry_run"],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "run needs --command" in out.stderr
