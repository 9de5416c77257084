"""Resumable stages: each finished stage leaves a marker, a rerun skips it, one run per workdir at a time.

A stage's marker (`<workdir>/stages/<name>.json`) is written atomically after
the stage's outputs, so a run killed mid-stage redoes only that stage (whose
own checkpoints may let it resume further). A lock file refuses a second run on
the same workdir while the first is alive.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import time
from typing import Any, Callable

from peft_jax.fileio import WorkdirError, atomic_write, require_local


class WorkdirLockedError(RuntimeError):
    """Another pipeline run holds this workdir."""


@contextlib.contextmanager
def workdir_lock(workdir: str):
    """Exclusive lock on `<workdir>/.lock` (released when the process dies, so a stale lock never blocks)."""
    require_local(workdir)
    try:
        os.makedirs(workdir, exist_ok=True)
        fd = os.open(os.path.join(workdir, ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise WorkdirError(e.errno, f"workdir {workdir} is not writable: {e.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EACCES):
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
                raise WorkdirLockedError(f"workdir {workdir} is in use by another pipeline run ({holder}); "
                                         "wait for it to finish or use another --workdir") from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode(), 0)
        yield
    finally:
        os.close(fd)


class Stages:
    """Runs named stages once per workdir; `run(name, fn)` returns the stage's JSON result (cached)."""

    def __init__(self, workdir: str, log: Callable[[str], None] = print):
        self.workdir = workdir
        self.dir = os.path.join(workdir, "stages")
        self.log = log
        os.makedirs(self.dir, exist_ok=True)

    def _marker(self, name: str) -> str:
        return os.path.join(self.dir, name.replace("/", "__") + ".json")

    def done(self, name: str) -> bool:
        return os.path.isfile(self._marker(name))

    def result(self, name: str) -> Any:
        with open(self._marker(name), encoding="utf-8") as f:
            return json.load(f)["result"]

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        if self.done(name):
            self.log(f"[stage] {name}: done earlier, skipped")
            return self.result(name)
        self.log(f"[stage] {name}: running")
        start = time.time()
        result = fn()
        record = {"result": result, "seconds": round(time.time() - start, 2)}
        atomic_write(self._marker(name), lambda tmp: _write_json(tmp, record), overwrite=True)
        self.log(f"[stage] {name}: finished in {record['seconds']:.1f}s")
        return result


def _write_json(path: str, obj: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
