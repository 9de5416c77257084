"""Resumable stages: each finished stage leaves a marker, a rerun skips it, one run per workdir at a time.

A stage's marker (`<workdir>/stages/<name>.json`) is written atomically after
the stage's outputs, so a run killed mid-stage redoes only that stage (whose
own checkpoints may let it resume further). `workdir_lock` (from `peft_jax.fileio`)
refuses a second run on the same workdir while the first is alive. Markers are
read and written through `etils.epath`, like every other file of a pipeline
run, so the workdir may be a `gs://` URL (docs/remote_workdirs.md).

In a multi-process run every process calls the same stages in the same order. Process 0 alone
holds the lock and writes markers; whether a stage is done, and its result, are process 0's,
broadcast to the others (a worker's local disk may not see what process 0 wrote). A stage is
either run by process 0 alone while the others wait (the default), or, when `collective=True`
(a training stage, whose steps need every process), by every process.
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable

import jax
import numpy as np

from peft_jax import fileio
from peft_jax.fileio import WorkdirError, WorkdirLockedError, workdir_path, write_text

__all__ = ["StageFailedError", "Stages", "WorkdirError", "WorkdirLockedError", "workdir_lock"]


def _broadcast_json(value: Any) -> Any:
    """Process 0's JSON-able `value` on every process (itself where there is one process)."""
    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel  (multi-process only)

    data = np.frombuffer(json.dumps(value).encode(), np.uint8) if jax.process_index() == 0 else np.zeros(0, np.uint8)
    size = int(multihost_utils.broadcast_one_to_all(np.int32(data.size)))
    buffer = np.zeros(size, np.uint8)
    buffer[:data.size] = data
    return json.loads(np.asarray(multihost_utils.broadcast_one_to_all(buffer)).tobytes().decode())


def workdir_lock(workdir: str, hold: bool = True):
    """`fileio.workdir_lock` for a pipeline run (another run trying the workdir is told it is one)."""
    return fileio.workdir_lock(workdir, hold, kind="pipeline run")


class StageFailedError(RuntimeError):
    """A stage that process 0 runs alone failed there (raised on the processes that waited for it)."""


class Stages:
    """Runs named stages once per workdir; `run(name, fn)` returns the stage's JSON result (cached).

    guard: called before each marker is written (the workdir lock's `check`, which raises if the
    lock was lost), so a run that lost its workdir writes nothing more into it.
    """

    def __init__(self, workdir: str, log: Callable[[str], None] = print, guard: Callable[[], None] | None = None):
        self.workdir = workdir_path(workdir)
        self.dir = self.workdir / "stages"
        self.log = log
        self.guard = guard or (lambda: None)
        self.writer = jax.process_index() == 0
        if self.writer:
            self.dir.mkdir(parents=True, exist_ok=True)

    def _marker(self, name: str):
        return self.dir / (name.replace("/", "__") + ".json")

    def done(self, name: str) -> bool:
        return self._marker(name).exists()

    def pending(self, names: list[str]) -> list[str]:
        """The names among `names` whose stage has not finished (process 0's markers, on every process)."""
        return _broadcast_json([n for n in names if not self.done(n)] if self.writer else None)

    def announce(self, name: str) -> None:
        """Logs that a stage run outside `run` starts (modules trained together, see `record`)."""
        if self.writer:
            self.log(f"[stage] {name}: running")

    def record(self, name: str, result: Any, seconds: float) -> None:
        """Writes the marker of a stage that ran outside `run` (called on every process, written by process 0)."""
        if self.writer:
            self.guard()
            write_text(self._marker(name), json.dumps({"result": result, "seconds": round(seconds, 2)}, indent=1,
                                                      sort_keys=True))
            self.log(f"[stage] {name}: finished in {seconds:.1f}s")

    def result(self, name: str) -> Any:
        return json.loads(self._marker(name).read_text())["result"]

    def run(self, name: str, fn: Callable[[], Any], collective: bool = False) -> Any:
        done = _broadcast_json(self.done(name) if self.writer else None)
        if done:
            if self.writer:
                self.log(f"[stage] {name}: done earlier, skipped")
            return _broadcast_json(self.result(name) if self.writer else None)
        if self.writer:
            self.log(f"[stage] {name}: running")
        start = time.time()
        if collective:
            result = fn()
        elif self.writer:
            result = self._run_alone(name, fn)
        else:  # waits for process 0's outcome; its failure is this process's too
            outcome = _broadcast_json(None)
            if "failed" in outcome:
                raise StageFailedError(f"stage {name} failed on process 0: {outcome['failed']}")
            result = outcome["ok"]
        if self.writer:
            record = {"result": result, "seconds": round(time.time() - start, 2)}
            self.guard()
            write_text(self._marker(name), json.dumps(record, indent=1, sort_keys=True))
            self.log(f"[stage] {name}: finished in {record['seconds']:.1f}s")
        # The others continue only once the marker is written, with process 0's result.
        return _broadcast_json(result)

    def _run_alone(self, name: str, fn: Callable[[], Any]) -> Any:
        """Process 0 runs `fn`, then tells the waiting processes how it went."""
        try:
            result = fn()
        except Exception as e:
            _broadcast_json({"failed": f"{type(e).__name__}: {e}"})
            raise
        _broadcast_json({"ok": result})
        return result
