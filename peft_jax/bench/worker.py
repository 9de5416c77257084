"""One side of one benchmark job, in a process of its own: set up, check, warm up, then time on request.

The harness starts `python -c <bootstrap> SIDE SPEC_PATH` (SIDE: ours | reference | prepare) and talks
to it in JSON lines: the worker writes {"event": "ready", "check": ...} once it has loaded its model,
computed the check values and warmed up; then each {"cmd": "run"} on its stdin is answered with
{"event": "result", "seconds": ..., ...} for one repetition, and {"cmd": "stop"} with the peak
resident memory. Library output is sent to stderr (the harness logs it), so stdout carries only
the protocol. A separate process per side keeps PyTorch and JAX memory and threads apart, and the
peak resident set size of a fresh process is that side's own.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import resource
import sys
import time
import traceback
from typing import Callable, NamedTuple


class Runner(NamedTuple):
    """What the worker drives: `check()` once (before timing), then `run()` per repetition."""

    check: Callable[[], dict]
    run: Callable[[], dict]


_RUNNER_MODULES = {"ours": "peft_jax.bench.ours", "reference": "peft_jax.bench.reference"}


def rss_mb(field: str = "VmRSS") -> float:
    """Current (VmRSS) or peak (VmHWM) resident set size of this process in MiB, from /proc."""
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+)", f.read()).group(1)) / 1024.0


def reset_peak_rss() -> None:
    """Resets VmHWM to the current RSS (Linux >= 4.0), so the timed phase gets a peak of its own."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def lifetime_peak_mb() -> float:
    """Peak RSS over the whole life of this process (never reset), in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def pin_threads(threads: int) -> None:
    """Restricts this process to its first `threads` cores, before any numerical library starts.

    XLA sizes its CPU thread pool from the affinity mask; PyTorch is told the same number explicitly.
    """
    cores = sorted(os.sched_getaffinity(0))
    if threads > len(cores):
        raise ValueError(f"threads={threads} but this process may use only {len(cores)} cores {cores}")
    os.sched_setaffinity(0, cores[:threads])


class _Protocol:
    """JSON lines on the original stdout; everything else printed to stdout goes to stderr."""

    def __init__(self):
        self._out = os.fdopen(os.dup(1), "w", buffering=1)
        os.dup2(2, 1)
        sys.stdout = sys.stderr

    def send(self, **msg) -> None:
        self._out.write(json.dumps(msg) + "\n")

    def commands(self):
        for line in sys.stdin:
            if line.strip():
                yield json.loads(line)


def _timed(runner) -> dict:
    t0 = time.perf_counter()
    out = runner.run()
    return {"seconds": time.perf_counter() - t0, **(out or {})}


def serve(proto: _Protocol, side: str, spec: dict) -> None:
    """Sets up `side` of the job in `spec`, reports ready, then serves run/stop commands."""
    pin_threads(spec["threads"])
    module = importlib.import_module(_RUNNER_MODULES[side])
    t0 = time.perf_counter()
    runner = module.make_runner(spec)
    check = runner.check()
    for _ in range(spec["warmup"]):
        runner.run()
    reset_peak_rss()
    proto.send(event="ready", check=check, setup_s=time.perf_counter() - t0, ready_rss_mb=rss_mb())
    for cmd in proto.commands():
        if cmd["cmd"] == "run":
            proto.send(event="result", **_timed(runner))
        elif cmd["cmd"] == "stop":
            proto.send(event="done", peak_rss_mb=lifetime_peak_mb(), timed_peak_rss_mb=rss_mb("VmHWM"),
                       ready_rss_mb=rss_mb())
            return
        else:
            raise ValueError(f"unknown command {cmd!r}")


def prepare(proto: _Protocol, spec: dict) -> None:
    """Writes what both sides load: the random base checkpoint (PyTorch) and the PEFT init (ours)."""
    importlib.import_module(_RUNNER_MODULES["reference"]).save_checkpoint(spec)
    if spec.get("peft_init"):
        importlib.import_module(_RUNNER_MODULES["ours"]).save_peft_init(spec)
    proto.send(event="done")


def main() -> None:
    """Entry point of the worker process: argv = [SIDE, SPEC_PATH]."""
    side, spec_path = sys.argv[1], sys.argv[2]
    proto = _Protocol()
    try:
        with open(spec_path) as f:
            spec = json.load(f)
        if side == "prepare":
            prepare(proto, spec)
        else:
            serve(proto, side, spec)
    except BaseException as e:  # the harness shows this instead of a bare broken pipe
        proto.send(event="error", message=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
        sys.exit(1)
