"""The harness's end of a worker process: start it on one side of a job, then speak JSON lines to it.

Each side runs in a fresh `python -c <bootstrap> SIDE SPEC_PATH` process (see `worker`), so its
memory and threads are its own; its stderr goes to a log file whose tail is shown when it fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The PyTorch worker gets a bare `peft_jax` package object, so importing peft_jax.bench.reference does
# not run peft_jax/__init__.py, which imports JAX (a few hundred MB that are not PyTorch's).
BOOTSTRAP = f"""
import sys, types
if sys.argv[1] == "reference":
    pkg = types.ModuleType("peft_jax")
    pkg.__path__ = [{_PACKAGE_ROOT!r}]
    sys.modules["peft_jax"] = pkg
from peft_jax.bench import worker
worker.main()
"""


class BenchmarkError(RuntimeError):
    """A worker failed, or the two sides of a job do not compute the same thing."""


class Worker:
    """One side of one job in its own process, spoken to in JSON lines."""

    def __init__(self, side: str, spec_path: str, log_path: str, env: dict):
        self.side, self.log_path = side, log_path
        self._log = open(log_path, "w")
        full_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false",
                    "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        self.proc = subprocess.Popen([sys.executable, "-c", BOOTSTRAP, side, spec_path], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._log, text=True, env=full_env)

    def _tail(self, n: int = 25) -> str:
        self._log.flush()
        with open(self.log_path, errors="replace") as f:
            return "".join(f.readlines()[-n:])

    def receive(self, job: str) -> dict:
        """The worker's next message; its failure or silent exit becomes a BenchmarkError."""
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            raise BenchmarkError(f"job {job}: the {self.side} worker exited (code {code}) without a reply; "
                                 f"last lines of {self.log_path}:\n{self._tail()}")
        msg = json.loads(line)
        if msg.get("event") == "error":
            raise BenchmarkError(f"job {job}: the {self.side} side failed: {msg['message']}\n{msg['traceback']}")
        return msg

    def send(self, **cmd) -> None:
        """Sends one command (`run` or `stop`) to the worker."""
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        """Kills the worker if it is still running and closes its log."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._log.close()
