"""File helpers: atomic writes keep the old file or the new one, and the workdir error is one class."""

import ast
import dataclasses
import errno
import os
import pathlib
import subprocess
import sys
import time

import pytest

from peft_jax import fileio
from peft_jax.peft import io as peft_io
from peft_jax.pipeline import runner
from peft_jax.train import loop

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from test_train_loop import _tiny_config as _TRAIN_CONFIG  # noqa: E402


def test_atomic_write_replaces_only_when_asked_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "new_dir" / "f.txt"
    fileio.atomic_write(path, lambda tmp: pathlib.Path(tmp).write_text("one"))
    assert path.read_text() == "one"
    with pytest.raises(FileExistsError, match="overwrite=True"):
        fileio.atomic_write(path, lambda tmp: pathlib.Path(tmp).write_text("two"))

    def full_disk(tmp):
        pathlib.Path(tmp).write_text("partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        fileio.atomic_write(path, full_disk, overwrite=True)
    assert path.read_text() == "one"
    assert [p.name for p in path.parent.iterdir()] == ["f.txt"]
    fileio.atomic_write(path, lambda tmp: pathlib.Path(tmp).write_text("two"), overwrite=True)
    assert path.read_text() == "two"


def test_atomic_write_keeps_its_old_import_path():
    assert peft_io.atomic_write is fileio.atomic_write


def test_fileio_imports_nothing_from_the_package():
    # Every part of peft_jax may import it, so it must not import any of them back.
    tree = ast.parse(pathlib.Path(fileio.__file__).read_text())
    imported = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in imported if m and m.split(".")[0] == "peft_jax"]


def test_workdir_error_is_one_class_caught_as_os_and_value_error(tmp_path):
    assert loop.WorkdirError is runner.WorkdirError is fileio.WorkdirError
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    # The pipeline's callers caught an OSError, training's callers a ValueError: both still catch it.
    with pytest.raises(OSError, match="not writable"):
        with runner.workdir_lock(str(blocker / "run")):
            pass
    with pytest.raises(ValueError, match="not writable"):
        loop.check_workdir(str(blocker / "run"))


_HOLDER = """
import sys, time
from peft_jax import fileio
with fileio.workdir_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(600)
"""


def test_deleting_a_live_runs_lock_file_does_not_let_a_second_run_or_train_start_beside_it(tmp_path):
    workdir = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(workdir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        (workdir / fileio.LOCK_RECORD).unlink()  # someone deletes the lock file of the live run
        with pytest.raises(fileio.WorkdirLockedError, match="is in use by another run"):
            with runner.workdir_lock(str(workdir)):
                pass
        with pytest.raises(fileio.WorkdirLockedError, match="is in use by another run"):  # train.py takes it too
            loop.train(_TRAIN_CONFIG(), workdir)
    finally:
        holder.kill()
        holder.wait()
    with runner.workdir_lock(str(workdir)):  # a killed holder's lock is free at once
        pass


def _record(workdir, **changes):
    owner = dataclasses.replace(fileio.Owner.me(), **changes)
    workdir.mkdir(exist_ok=True)
    (workdir / fileio.LOCK_RECORD).write_text(owner.to_json())
    return owner


def test_a_lock_record_refuses_only_while_its_owner_process_is_alive(tmp_path):
    # Where the kernel lock is unavailable (some network file systems) the record alone must do: a live
    # owner on this host refuses; a reused pid (another start time), a zombie or a dead one does not.
    parent = os.getppid()
    _record(tmp_path, pid=parent, started=fileio._process_start(parent))
    with pytest.raises(fileio.WorkdirLockedError, match=rf"pid {parent} since"):
        fileio.LocalLock(fileio.workdir_path(tmp_path)).acquire()
    _record(tmp_path, pid=parent, started=(fileio._process_start(parent) or 0) + 1)  # the pid was reused
    lock = fileio.LocalLock(fileio.workdir_path(tmp_path))
    lock.acquire()
    lock.release()
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])  # a killed run its parent has not reaped yet
    while fileio._proc_stat(zombie.pid)[0] not in (b"Z", None):
        time.sleep(0.05)
    _record(tmp_path, pid=zombie.pid, started=fileio._process_start(zombie.pid))
    lock = fileio.LocalLock(fileio.workdir_path(tmp_path))
    lock.acquire()
    lock.release()
    zombie.wait()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    _record(tmp_path, pid=int(dead.stdout))
    with runner.workdir_lock(str(tmp_path)):
        assert fileio.Owner.parse((tmp_path / fileio.LOCK_RECORD).read_text()).pid == os.getpid()
    assert not (tmp_path / fileio.LOCK_RECORD).exists()  # released


def test_local_paths_with_colons_are_not_mistaken_for_urls():
    assert fileio.require_local("runs/a:b") == "runs/a:b"
    assert fileio.require_local("runs/x://y") == "runs/x://y"  # the scheme must be a plain name
