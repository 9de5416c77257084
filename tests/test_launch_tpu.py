"""The TPU launcher's commands (--dry_run) are valid: gcloud calls with the runtime of the accelerator family,
shell payloads bash accepts, and job commands the real entry points' flag parsers (absl + config_flags) accept
with the one multi-host switch set."""

import json
import pathlib
import shlex
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TPU = ROOT / "launch" / "tpu" / "tpu.py"
sys.path.insert(0, str(TPU.parent))
import tpu  # noqa: E402

# Loads an entry point as a module (its absl flags get defined, app.run is not called), runs the check its
# __main__ runs, parses argv and prints the config's distributed section. config_flags defines the
# --config.<field> flags from sys.argv when the entry point defines --config, hence one process per command.
PARSE = """
import importlib.util, json, sys
from absl import flags
argv = sys.argv = json.loads(sys.argv[1])
from peft_jax.train import config_lib
config_lib.check_overrides(argv)
spec = importlib.util.spec_from_file_location("entry", argv[0])
spec.loader.exec_module(importlib.util.module_from_spec(spec))
assert flags.FLAGS(argv) == argv[:1]
print(json.dumps(flags.FLAGS.config.distributed.to_dict()))
"""

JOBS = {  # entry point -> a job command as a user passes it to `run --command`
    "launch/train.py": "launch/train.py --config=configs/train.py:model=mt5_tiny,peft=lora --config.num_steps=40 "
                       "--workdir=gs://b/train",
    "launch/pipeline.py": "launch/pipeline.py --config=configs/xlsum_mt5.py:size=xl --workdir=gs://b/run",
    "launch/evaluate.py": "launch/evaluate.py --config=configs/evaluate.py:runlocal --workdir=gs://b/eval",
    "launch/compose.py": "launch/compose.py --config=configs/compose/analogy.py --config.output=gs://b/m.safetensors",
}


def _tpu(*argv, check=True):
    return subprocess.run([sys.executable, str(TPU), *argv], capture_output=True, text=True, check=check,
                          env={"PATH": "/nonexistent"})  # no gcloud on PATH: a dry run must not call it


def _dry(*argv):
    return _tpu(*argv, "--dry_run").stdout.strip().splitlines()


def _payload(cmd: str) -> str:
    """The shell command a `gcloud ... ssh --command=...` line runs on the workers."""
    (arg,) = [a for a in shlex.split(cmd) if a.startswith("--command=")]
    return arg[len("--command="):]


def _job_argv(payload: str) -> list[str]:
    """The python invocation inside a run payload: from the interpreter to the output redirection."""
    words = shlex.split(payload)
    start = next(i for i, w in enumerate(words) if w.endswith("/bin/python"))
    return words[start:words.index(">", start)]


def _parse_all(argvs: list[list[str]]) -> list[dict]:
    """The real entry points' parsers on the argvs (entry point first), all at once."""
    procs = [subprocess.Popen([sys.executable, "-c", PARSE, json.dumps(a)], cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for a in argvs]
    out = []
    for argv, p in zip(argvs, procs):
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 0, f"{argv[0]} refused {argv}:\n{stderr[-3000:]}"
        out.append(json.loads(stdout.splitlines()[-1]))
    return out


def test_every_job_command_parses_with_its_entry_point_and_sets_the_switch():
    argvs = []
    for entry, job in JOBS.items():
        (cmd,) = _dry("run", "--name=pj", "--zone=z", f"--command={job}")
        remote = _job_argv(_payload(cmd))
        _, simulated = [shlex.split(line) for line in _dry("run", "--simulate=2", f"--command={job}")]
        assert remote[1] == simulated[1] == entry and simulated[:-4] == [sys.executable, *remote[1:]]
        argvs += [remote[1:], simulated[1:]]
    parsed = _parse_all(argvs)
    for remote, simulated in zip(parsed[::2], parsed[1::2]):
        # A TPU slice: the switch alone, the peers come from the metadata.
        assert remote == {"enabled": True, "coordinator_address": "", "num_processes": -1, "process_id": -1,
                          "cpu_collectives": ""}
        assert simulated["enabled"] and simulated["num_processes"] == 2 and simulated["process_id"] == 1
        assert simulated["coordinator_address"].startswith("127.0.0.1:") and simulated["cpu_collectives"] == "gloo"


def test_every_remote_payload_is_valid_shell():
    lines = (_dry("setup", "--name=pj", "--zone=z", "--repo=https://example.org/peft_jax.git", "--ref=v1")
             + _dry("setup", "--name=pj", "--zone=z", "--wheel=dist/peft_jax-0.1.0-py3-none-any.whl")
             + _dry("run", "--name=pj", "--zone=z", f"--command={JOBS['launch/train.py']}")
             + _dry("logs", "--name=pj", "--zone=z"))
    payloads = [_payload(c) for c in lines if "--command=" in c]
    assert len(payloads) == 5
    for payload in payloads:
        check = subprocess.run(["bash", "-n", "-c", payload], capture_output=True, text=True)
        assert check.returncode == 0, (payload, check.stderr)


@pytest.mark.parametrize("accelerator,runtime", [
    ("v4-32", "tpu-ubuntu2204-base"), ("v5litepod-16", "v2-alpha-tpuv5-lite"), ("v5p-8", "v2-alpha-tpuv5"),
    ("v6e-8", "v2-alpha-tpuv6e")])
def test_runtime_version_follows_the_accelerator_family(accelerator, runtime):
    assert _dry("create", "--name=pj", "--zone=z", f"--accelerator={accelerator}", "--spot") == [
        f"gcloud compute tpus tpu-vm create pj --zone=z --accelerator-type={accelerator} --version={runtime} --spot"]
    assert _dry("queued", "--name=pj", "--zone=z", "--project=p", f"--accelerator={accelerator}") == [
        f"gcloud compute tpus queued-resources create pj --node-id=pj --zone=z --project=p "
        f"--accelerator-type={accelerator} --runtime-version={runtime}"]


def test_setup_ships_git_or_a_wheel_never_the_local_checkout_and_uses_python_311():
    (clone,) = _dry("setup", "--name=pj", "--zone=z", "--repo=https://example.org/peft_jax.git", "--ref=v1")
    payload = _payload(clone)
    assert "git clone https://example.org/peft_jax.git ~/peft_jax" in payload and "origin v1" in payload
    assert f"uv venv --allow-existing --python {tpu.PYTHON} ~/peft_jax_env" in payload and tpu.PYTHON >= "3.11"
    mkdir, copy, install = _dry("setup", "--name=pj", "--zone=z", "--wheel=dist/peft_jax-0.1.0-py3-none-any.whl")
    shipped = shlex.split(copy)[6:-3]
    assert shipped == ["dist/peft_jax-0.1.0-py3-none-any.whl", str(ROOT / "launch"), str(ROOT / "configs"),
                       str(ROOT / "constraints.txt")]
    assert "--constraint ~/peft_jax/constraints.txt './peft_jax-0.1.0-py3-none-any.whl[tpu]'" in _payload(install)
    assert "--constraint ~/peft_jax/constraints.txt '.[tpu]'" in payload
    assert not any(".venv" in line or "runs" in line for line in (clone, mkdir, copy, install))


def test_run_detaches_with_per_worker_logs_and_logs_reads_them():
    (cmd,) = _dry("run", "--name=pj", "--zone=z", f"--command={JOBS['launch/pipeline.py']}")
    payload = _payload(cmd)
    assert "--worker=all" in cmd and "{ setsid nohup " in payload and "< /dev/null & }" in payload
    assert "> ~/peft_jax_logs/worker-$W.log 2>&1" in payload and "agent-worker-number" in payload
    assert _dry("logs", "--name=pj", "--zone=z", "--worker=1", "--lines=20") == [
        "gcloud compute tpus tpu-vm ssh pj --zone=z --worker=1 '--command=tail -n 20 ~/peft_jax_logs/worker-*.log'"]


def test_fetch_and_delete():
    assert _dry("fetch", "--name=pj", "--zone=z", "--remote=runs/a", "--local=out") == [
        "gcloud compute tpus tpu-vm scp --recurse 'pj:~/peft_jax/runs/a' out --zone=z --worker=0"]
    assert _dry("delete", "--name=pj", "--zone=z") == ["gcloud compute tpus tpu-vm delete pj --zone=z --quiet"]
    assert _dry("delete", "--name=pj", "--zone=z", "--queued") == [
        "gcloud compute tpus queued-resources delete pj --zone=z --force --quiet"]


@pytest.mark.parametrize("argv,message", [
    (["run", "--name=pj", "--zone=z"], "run needs --command"),
    (["setup", "--name=pj", "--zone=z"], "exactly one of --repo=URL or --wheel=PATH"),
    (["create", "--name=pj", "--zone=z", "--accelerator=v9-8"], "unknown accelerator family 'v9'"),
    (["create", "--name=pj"], "create needs --name and --zone"),
    (["logs", "--simulate=2", "--name=pj", "--zone=z"], "goes with the run action only"),
])
def test_bad_flags_are_one_line_errors(argv, message):
    out = _tpu(*argv, "--dry_run", check=False)
    assert out.returncode == 2 and message in out.stderr, out.stderr
