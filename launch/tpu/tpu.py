"""Cloud TPU VM helper: create a VM (single host or pod slice), install peft_jax on every worker, run a
pipeline stage on all workers at once, copy results back, delete. `--dry_run` prints the exact commands.

  python launch/tpu/tpu.py create  --name=pj --zone=us-central2-b --accelerator=v4-32 [--spot]
  python launch/tpu/tpu.py setup   --name=pj --zone=us-central2-b
  python launch/tpu/tpu.py run     --name=pj --zone=us-central2-b \
      --command="launch/pipeline.py --config=configs/xlsum_mt5.py:size=xl --workdir=gs://BUCKET/xlsum_xl"
  python launch/tpu/tpu.py fetch   --name=pj --zone=us-central2-b --remote=runs/xlsum_xl --local=results/
  python launch/tpu/tpu.py delete  --name=pj --zone=us-central2-b

On a pod slice every worker runs the same command; the configs' `distributed=True` makes each process call
`jax.distributed.initialize()`, which finds its peers from the TPU metadata, and each process feeds its
share of the global batch.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys

JAX_TPU = "jax[tpu]==0.10.2"
REMOTE_DIR = "peft_jax"


def _base(args) -> list[str]:
    return ["gcloud", "compute", "tpus", "tpu-vm"]


def _where(args) -> list[str]:
    out = [f"--zone={args.zone}"]
    if args.project:
        out.append(f"--project={args.project}")
    return out


def _ssh(args, command: str, worker: str = "all") -> list[str]:
    return _base(args) + ["ssh", args.name, *_where(args), f"--worker={worker}", f"--command={command}"]


def create(args) -> list[list[str]]:
    cmd = _base(args) + ["create", args.name, *_where(args), f"--accelerator-type={args.accelerator}",
                         f"--version={args.version}"]
    if args.spot:
        cmd.append("--spot")
    return [cmd]


def setup(args) -> list[list[str]]:
    """Copies this checkout to every worker and installs it with JAX for TPU into a venv there."""
    install = (f"cd {REMOTE_DIR} && python3 -m venv .venv && .venv/bin/pip install -q --upgrade pip && "
               f".venv/bin/pip install -q -e . \"{JAX_TPU}\"")
    copy = _base(args) + ["scp", "--recurse", args.source, f"{args.name}:~/{REMOTE_DIR}", *_where(args),
                          "--worker=all"]
    return [copy, _ssh(args, install)]


def run(args) -> list[list[str]]:
    """The same command on all workers (each becomes one jax.distributed process)."""
    command = f"cd {REMOTE_DIR} && .venv/bin/python {args.command} --config.distributed=True"
    return [_ssh(args, command)]


def fetch(args) -> list[list[str]]:
    return [_base(args) + ["scp", "--recurse", f"{args.name}:~/{REMOTE_DIR}/{args.remote}", args.local,
                           *_where(args), "--worker=0"]]


def delete(args) -> list[list[str]]:
    return [_base(args) + ["delete", args.name, *_where(args), "--quiet"]]


ACTIONS = {"create": create, "setup": setup, "run": run, "fetch": fetch, "delete": delete}


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=sorted(ACTIONS))
    p.add_argument("--name", required=True)
    p.add_argument("--zone", required=True)
    p.add_argument("--project", default="")
    p.add_argument("--accelerator", default="v4-8", help="e.g. v4-8 (single host), v4-32 (pod slice), v5litepod-16")
    p.add_argument("--version", default="tpu-ubuntu2204-base")
    p.add_argument("--spot", action="store_true", help="preemptible capacity; the pipeline resumes after preemption")
    p.add_argument("--source", default=".", help="checkout to copy to the workers")
    p.add_argument("--command", default="", help="entry point and flags, relative to the checkout")
    p.add_argument("--remote", default="runs", help="fetch: path under the remote checkout")
    p.add_argument("--local", default="results", help="fetch: local destination")
    p.add_argument("--dry_run", action="store_true", help="print the commands instead of running them")
    args = p.parse_args(argv)
    if args.action == "run" and not args.command:
        p.error("run needs --command, e.g. --command='launch/pipeline.py --config=... --workdir=...'")
    return args


def main(argv=None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    for cmd in ACTIONS[args.action](args):
        print(shlex.join(cmd), flush=True)
        if not args.dry_run:
            rc = subprocess.call(cmd)
            if rc:
                return rc
    return 0


if __name__ == "__main__":
    sys.exit(main())
