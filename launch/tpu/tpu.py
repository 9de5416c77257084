"""Cloud TPU VM launcher: create a VM or pod slice (directly or through a queued resource), install peft_jax on
every worker, start a job on all workers detached with per-worker logs, read the logs, fetch results, delete.
`--dry_run` prints the exact commands and runs none.

  python launch/tpu/tpu.py queued --name=pj --zone=us-central2-b --accelerator=v4-32 --spot
  python launch/tpu/tpu.py setup  --name=pj --zone=us-central2-b --repo=https://github.com/ORG/peft_jax --ref=main
  python launch/tpu/tpu.py run    --name=pj --zone=us-central2-b \
      --command="launch/pipeline.py --config=configs/xlsum_mt5.py:size=xl --workdir=runs/xlsum_xl"
  python launch/tpu/tpu.py logs   --name=pj --zone=us-central2-b [--worker=0] [--lines=100]
  python launch/tpu/tpu.py fetch  --name=pj --zone=us-central2-b --remote=runs/xlsum_xl --local=results/
  python launch/tpu/tpu.py delete --name=pj --zone=us-central2-b [--queued]

Every worker runs the same command with `--config.distributed.enabled=True`, the one multi-host switch of
every entry point (see peft_jax/distributed.py): each process joins the others through
jax.distributed.initialize(), which finds its peers from the TPU metadata.

`run --simulate=N` runs that per-worker command here as N CPU processes, passing the coordinator address,
process count and id through the same switch, so the multi-host path can be exercised without a TPU.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shlex
import socket
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
REMOTE_DIR = "~/peft_jax"  # the code on each worker (a git checkout, or launch/ + configs/ next to a wheel)
REMOTE_ENV = "~/peft_jax_env"  # the Python >= 3.11 environment on each worker
REMOTE_LOGS = "~/peft_jax_logs"  # worker-<i>.log per worker
PYTHON = "3.11"  # the TPU VM images ship 3.10; uv installs this interpreter next to it
SWITCH = "--config.distributed.enabled=True"
# The worker's index within the slice, from the TPU VM metadata server.
WORKER_ID = ("$(curl -sf -H Metadata-Flavor:Google http://metadata.google.internal/computeMetadata/v1/instance/"
             "attributes/agent-worker-number || hostname)")
# Runtime (software) version per accelerator family: cloud.google.com/tpu/docs/runtimes.
RUNTIMES = {"v4": "tpu-ubuntu2204-base", "v5litepod": "v2-alpha-tpuv5-lite", "v5e": "v2-alpha-tpuv5-lite",
            "v5p": "v2-alpha-tpuv5", "v6e": "v2-alpha-tpuv6e"}


def runtime_version(accelerator: str) -> str:
    """The runtime version of an accelerator type such as v4-32, v5litepod-16, v5p-8 or v6e-8."""
    family = accelerator.rsplit("-", 1)[0]
    if family not in RUNTIMES:
        raise ValueError(f"unknown accelerator family {family!r} in {accelerator!r}; known: {sorted(RUNTIMES)} "
                         "(or pass --version)")
    return RUNTIMES[family]


# ------------------------------------------------------------------------------ gcloud
def _where(args) -> list[str]:
    return [f"--zone={args.zone}"] + ([f"--project={args.project}"] if args.project else [])


def _vm(args, *rest: str) -> list[str]:
    return ["gcloud", "compute", "tpus", "tpu-vm", *rest]


def _ssh(args, command: str, worker: str = "all") -> list[str]:
    return _vm(args, "ssh", args.name, *_where(args), f"--worker={worker}", f"--command={command}")


def _version(args) -> str:
    return args.version or runtime_version(args.accelerator)


def create(args) -> list[list[str]]:
    cmd = _vm(args, "create", args.name, *_where(args), f"--accelerator-type={args.accelerator}",
              f"--version={_version(args)}")
    return [cmd + (["--spot"] if args.spot else [])]


def queued(args) -> list[list[str]]:
    """A queued resource: the slice is created when capacity frees up (`gcloud ... queued-resources list`)."""
    cmd = ["gcloud", "compute", "tpus", "queued-resources", "create", args.name, f"--node-id={args.name}",
           *_where(args), f"--accelerator-type={args.accelerator}", f"--runtime-version={_version(args)}"]
    return [cmd + (["--spot"] if args.spot else [])]


def _install_env() -> str:
    """uv, then a Python 3.11 venv from an interpreter uv installs (the image's python3 is 3.10)."""
    return ("(command -v ~/.local/bin/uv || curl -LsSf https://astral.sh/uv/install.sh | sh) && "
            f"~/.local/bin/uv venv --allow-existing --python {PYTHON} {REMOTE_ENV}")


def _pip(spec: str, args) -> str:
    constraints = f" --constraint {REMOTE_DIR}/{args.constraints}" if args.constraints else ""
    return f"~/.local/bin/uv pip install --python {REMOTE_ENV}/bin/python{constraints} {spec}"


def setup(args) -> list[list[str]]:
    """Ships the code (a git clone of --repo at --ref, or a built --wheel) and installs it for TPU."""
    env = _install_env()
    if args.repo:
        repo, ref = shlex.quote(args.repo), shlex.quote(args.ref)
        clone = (f"(test -d {REMOTE_DIR}/.git || git clone {repo} {REMOTE_DIR}) && cd {REMOTE_DIR} && "
                 f"git fetch --quiet origin {ref} && git checkout --quiet FETCH_HEAD")
        return [_ssh(args, f"{clone} && {env} && {_pip(shlex.quote('.[tpu]'), args)}")]
    # A wheel holds the package; the entry points, configs and constraints go next to it (never .venv/ or runs/).
    wheel = pathlib.Path(args.wheel).name
    extra = [str(ROOT / args.constraints)] if args.constraints else []
    copy = _vm(args, "scp", "--recurse", args.wheel, str(ROOT / "launch"), str(ROOT / "configs"), *extra,
               f"{args.name}:{REMOTE_DIR}/", *_where(args), "--worker=all")
    return [_ssh(args, f"mkdir -p {REMOTE_DIR}"), copy,
            _ssh(args, f"{env} && cd {REMOTE_DIR} && {_pip(shlex.quote('./' + wheel + '[tpu]'), args)}")]


def worker_argv(args, python: str) -> list[str]:
    """The command every worker runs: the entry point and its flags, with the multi-host switch."""
    return [python, *shlex.split(args.command), SWITCH]


def run(args) -> list[list[str]]:
    """Starts the command on all workers, detached (it survives the ssh session), output in per-worker logs."""
    python = os.path.relpath(f"{REMOTE_ENV}/bin/python", REMOTE_DIR)  # the job runs in REMOTE_DIR
    job = shlex.join(worker_argv(args, python))
    log = f"{REMOTE_LOGS}/worker-$W.log"
    # The braces put only the job in the background, so $W stays set for the message.
    command = (f"cd {REMOTE_DIR} && mkdir -p {REMOTE_LOGS} && W={WORKER_ID} && "
               f"{{ setsid nohup {job} > {log} 2>&1 < /dev/null & }} && echo \"worker $W: started, log {log}\"")
    return [_ssh(args, command)]


def logs(args) -> list[list[str]]:
    return [_ssh(args, f"tail -n {args.lines} {REMOTE_LOGS}/worker-*.log", worker=args.worker)]


def fetch(args) -> list[list[str]]:
    return [_vm(args, "scp", "--recurse", f"{args.name}:{REMOTE_DIR}/{args.remote}", args.local, *_where(args),
                "--worker=0")]


def delete(args) -> list[list[str]]:
    if args.queued:  # --force also deletes the slice the queued resource created
        return [["gcloud", "compute", "tpus", "queued-resources", "delete", args.name, *_where(args), "--force",
                 "--quiet"]]
    return [_vm(args, "delete", args.name, *_where(args), "--quiet")]


ACTIONS = {"create": create, "queued": queued, "setup": setup, "run": run, "logs": logs, "fetch": fetch,
           "delete": delete}


# ---------------------------------------------------------------------------- simulate
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def simulated_argv(args, port: int, process_id: int) -> list[str]:
    """Worker `process_id`'s command here: the TPU worker's, with the peers it would find from the metadata."""
    d = "--config.distributed"
    return worker_argv(args, sys.executable) + [
        f"{d}.coordinator_address=127.0.0.1:{port}", f"{d}.num_processes={args.simulate}",
        f"{d}.process_id={process_id}", f"{d}.cpu_collectives=gloo"]


def simulate(args) -> int:
    """Runs N local worker processes (CPU, gloo collectives) to completion; logs in --log_dir/worker-<i>.log."""
    port = _free_port()
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={args.simulate_devices}"}
    if not args.dry_run:
        os.makedirs(args.log_dir, exist_ok=True)
    procs = []
    for i in range(args.simulate):
        cmd = simulated_argv(args, port, i)
        print(shlex.join(cmd), flush=True)
        if not args.dry_run:
            with open(os.path.join(args.log_dir, f"worker-{i}.log"), "w") as log:
                procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
    failed = [i for i, p in enumerate(procs) if p.wait()]
    for i in failed:
        print(f"worker {i} failed; its log: {os.path.join(args.log_dir, f'worker-{i}.log')}", file=sys.stderr)
    return 1 if failed else 0


# -------------------------------------------------------------------------------- main
def parse(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=sorted(ACTIONS))
    p.add_argument("--name", default="", help="TPU VM (and queued resource) name")
    p.add_argument("--zone", default="")
    p.add_argument("--project", default="")
    p.add_argument("--accelerator", default="v4-8", help="e.g. v4-8, v4-32 (pod slice), v5litepod-16, v5p-8, v6e-8")
    p.add_argument("--version", default="", help="runtime version; '' = the one of the accelerator family")
    p.add_argument("--spot", action="store_true", help="preemptible capacity; the pipeline resumes after preemption")
    p.add_argument("--repo", default="", help="setup: git URL the workers clone")
    p.add_argument("--ref", default="main", help="setup: branch, tag or commit of --repo")
    p.add_argument("--wheel", default="", help="setup: a built wheel to install instead of a git clone")
    p.add_argument("--constraints", default="constraints.txt",
                   help="setup: the tested versions (relative to the checkout; shipped with a wheel); '' = none")
    p.add_argument("--command", default="", help="run: entry point and flags, relative to the checkout")
    p.add_argument("--simulate", type=int, default=0, help="run: N local CPU processes instead of the TPU workers")
    p.add_argument("--simulate_devices", type=int, default=1, help="run --simulate: CPU devices per process")
    p.add_argument("--log_dir", default="runs/tpu_simulate", help="run --simulate: where worker-<i>.log go")
    p.add_argument("--worker", default="all", help="logs: which worker's log (all, or an index)")
    p.add_argument("--lines", type=int, default=50, help="logs: last lines of each log")
    p.add_argument("--remote", default="runs", help="fetch: path under the remote code directory")
    p.add_argument("--local", default="results", help="fetch: local destination")
    p.add_argument("--queued", action="store_true", help="delete: the queued resource (and its slice)")
    p.add_argument("--dry_run", action="store_true", help="print the commands instead of running them")
    args = p.parse_args(argv)
    _check(p, args)
    return args


def _check(p, args) -> None:
    """Bad combinations of flags: one line naming the problem."""
    if args.action == "run" and not args.command:
        p.error("run needs --command, e.g. --command='launch/pipeline.py --config=... --workdir=...'")
    if args.simulate < 0 or (args.simulate and args.action != "run"):
        p.error("--simulate=N (N >= 1) goes with the run action only")
    if not args.simulate and not (args.name and args.zone):
        p.error(f"{args.action} needs --name and --zone")
    if args.action == "setup" and bool(args.repo) == bool(args.wheel):
        p.error("setup ships the code by git or as a wheel: pass exactly one of --repo=URL or --wheel=PATH")
    if args.action in ("create", "queued") and not args.version:
        try:
            runtime_version(args.accelerator)
        except ValueError as e:
            p.error(str(e))


def main(argv=None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    if args.simulate:
        return simulate(args)
    for cmd in ACTIONS[args.action](args):
        print(shlex.join(cmd), flush=True)
        if not args.dry_run:
            rc = subprocess.call(cmd)
            if rc:
                return rc
    return 0


if __name__ == "__main__":
    sys.exit(main())
