"""File-system helpers shared by every part of the package: workdir paths, atomic writes, the workdir error.

A workdir is a local directory or an object-store URL (`gs://bucket/run`); `workdir_path` turns either
into an `etils.epath.Path`, through which checkpoints, module files, metrics, markers and results are
written, so the same code writes to a local disk or to Cloud Storage. A URL whose scheme has no
installed file-system backend is refused by name instead of becoming a local folder `./gs:/bucket/run`.
`workdir_lock` keeps one run per workdir, on a local disk and on object storage
(docs/remote_workdirs.md says what it guarantees).

This module imports nothing from peft_jax, so models, PEFT modules, training, the pipeline and
the benchmarks can all use it without creating an import cycle.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import glob as glob_lib
import hashlib
import json
import os
import pathlib
import socket
import tempfile
import threading
import time
import uuid
from typing import Callable, Iterator

from etils import epath

# What to install for a scheme's file-system backend (etils.epath reaches it through fsspec).
BACKEND_PACKAGES = {"gs": "gcsfs", "s3": "s3fs", "az": "adlfs", "hf": "huggingface_hub"}


class WorkdirError(OSError, ValueError):
    """The work directory cannot be created or written.

    An OSError (it comes from the file system) and a ValueError (a bad `--workdir` setting), so
    callers that catch either keep catching it.
    """


def scheme(path: str | os.PathLike) -> str | None:
    """'gs' for 'gs://bucket/x', None for a local path ('runs/a:b' and 'runs/x://y' are local)."""
    name, sep, _ = os.fspath(path).partition("://")
    return name if sep and name.isidentifier() else None


def is_remote(path: str | os.PathLike) -> bool:
    return scheme(path) is not None


def workdir_path(path: str | os.PathLike, what: str = "workdir") -> epath.Path:
    """`path` as an epath.Path: local paths made absolute, URLs checked to have a file-system backend.

    Refuses an empty path (it would mean the current directory and whatever `checkpoints/` is there).
    """
    text = os.fspath(path)
    if not text.strip():
        raise WorkdirError(f"{what} is empty; pass a directory (e.g. --workdir=runs/my_run) or a gs:// URL")
    if not is_remote(text):
        return epath.Path(os.path.abspath(text))
    name = scheme(text)
    if name not in BACKEND_PACKAGES:
        raise WorkdirError(f"{what} {text!r}: {name}:// is not a supported storage scheme "
                           f"(supported: a local path, {', '.join(s + '://' for s in BACKEND_PACKAGES)})")
    out = epath.Path(text)
    try:
        out.exists()  # the first call loads the backend
    except (ImportError, NotImplementedError) as e:
        raise WorkdirError(f"{what} {text!r}: no file-system backend for {name}:// is installed ({e}); "
                           f"pip install {BACKEND_PACKAGES[name]}, or use a local path") from None
    return out


def require_local(path: str | os.PathLike, what: str = "workdir", why: str = "") -> str:
    """`path` as a string, refusing an empty path and a URL (`gs://...`) where only local files are used.

    Without this, `os.path.abspath("gs://b/x")` would quietly become a local folder `./gs:/b/x`.
    """
    path = os.fspath(path)
    if not path.strip():
        raise WorkdirError(f"{what} is empty; pass a directory (e.g. --workdir=runs/my_run)")
    if is_remote(path):
        raise WorkdirError(f"{what} {path!r}: remote {scheme(path)}:// paths are not supported here"
                           f"{': ' + why if why else ''}; use a local path")
    return path


def atomic_write(path: str | os.PathLike, write_fn: Callable[[str], object], overwrite: bool = False) -> None:
    """Calls write_fn(tmp_path), then puts the file at `path`: a reader sees the old file or the new one.

    Locally: fsync, then rename in the target's directory. On object storage an object appears whole
    when its upload completes, so the local temporary file is uploaded in one write.
    """
    if is_remote(path):
        _atomic_upload(epath.Path(os.fspath(path)), write_fn, overwrite)
        return
    path = os.fspath(path)
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path}: already exists; pass overwrite=True to replace it")
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    # The temporary file sits in the target's directory so that the final rename never crosses a file system.
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    os.close(fd)
    try:
        write_fn(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _atomic_upload(path: epath.Path, write_fn: Callable[[str], object], overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: already exists; pass overwrite=True to replace it")
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = os.path.join(tmp_dir, "part")
        write_fn(tmp)
        with open(tmp, "rb") as f:
            data = f.read()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def write_text(path: str | os.PathLike, text: str, overwrite: bool = True) -> None:
    """Atomically writes `text` (UTF-8) to a local path or an object URL."""
    atomic_write(path, lambda tmp: _write_local(tmp, text.encode("utf-8")), overwrite=overwrite)


def write_bytes(path: str | os.PathLike, data: bytes, overwrite: bool = True) -> None:
    atomic_write(path, lambda tmp: _write_local(tmp, data), overwrite=overwrite)


def _write_local(tmp: str, data: bytes) -> None:
    with open(tmp, "wb") as f:
        f.write(data)


def append_text(path: str | os.PathLike, text: str) -> None:
    """Appends `text` to a file; on object storage (no append) the object is rewritten with it added."""
    if not is_remote(path):
        with open(path, "a", encoding="utf-8") as f:
            f.write(text)
        return
    p = epath.Path(os.fspath(path))
    write_text(p, (p.read_text() if p.exists() else "") + text)


def read_json(path: str | os.PathLike):
    return json.loads(epath.Path(os.fspath(path)).read_text())


def probe_writable(path: epath.Path, what: str = "workdir") -> None:
    """Creates directory `path` if needed and proves it is writable (a file written and removed)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{uuid.uuid4().hex}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise WorkdirError(f"{what} {os.fspath(path)!r} is not writable ({e.strerror or e}); "
                           "choose a directory you can write to") from None


def files_under(directory: epath.Path) -> list[str]:
    """Every file below `directory`, as '/'-separated paths relative to it, sorted (by `iterdir`, which every
    epath backend implements alike: fsspec's `walk` returns bucket-relative roots without their scheme)."""
    out = []
    for child in directory.iterdir():
        if child.is_dir():
            out += [f"{child.name}/{name}" for name in files_under(child)]
        else:
            out.append(child.name)
    return sorted(out)


def read_json_beside(config_path: str, other_paths: tuple[str, ...], error: type[Exception], expected: str) -> dict:
    """The JSON object at `config_path` (local or remote), once it and `other_paths` are all present; a missing
    file raises `error` naming it and what was `expected` there (e.g. "an HF peft adapter directory")."""
    for p in (config_path, *other_paths):
        if not epath.Path(p).is_file():
            raise error(f"{p}: missing (expected {expected})")
    return read_json(config_path)


def glob(pattern: str) -> list[str]:
    """The paths matching a glob pattern, sorted: local (`glob.glob`) or remote (`gs://b/text/*.txt`)."""
    if not is_remote(pattern):
        return sorted(glob_lib.glob(pattern))
    parts = pattern.split("/")
    first = next((i for i, part in enumerate(parts) if glob_lib.has_magic(part)), len(parts))
    root = epath.Path("/".join(parts[:first]))
    return sorted(os.fspath(p) for p in root.glob("/".join(parts[first:])))


@contextlib.contextmanager
def local_path(path: str | os.PathLike, upload: bool = False) -> Iterator[str]:
    """`path` as a local path, for code that reads and writes only local files (SentencePiece, transformers).

    A local `path` is yielded as it is; a remote one becomes a temporary local copy with the same name (a file
    or a directory tree; nothing if absent). upload=True uploads the files new or changed there at the end.
    """
    if not is_remote(path):
        yield os.fspath(path)
        return
    remote = epath.Path(os.fspath(path))
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, remote.name)
        before = _download(remote, local)
        yield local
        if upload:
            for name, data in _local_files(local).items():
                if before.get(name) != hashlib.sha256(data).hexdigest():
                    write_bytes(remote / name if name else remote, data)


def _download(remote: epath.Path, local: str) -> dict[str, str]:
    """Copies the file or tree `remote` to `local`; {relative name ('' for a file): sha256} of what came."""
    digests = {}
    for name in files_under(remote) if remote.is_dir() else [""] if remote.exists() else []:
        data = (remote / name if name else remote).read_bytes()
        target = pathlib.Path(local, name)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        digests[name] = hashlib.sha256(data).hexdigest()
    return digests


def _local_files(local: str) -> dict[str, bytes]:
    """{relative name ('' for a file): bytes} of the file or tree at `local`."""
    files = [local] if os.path.isfile(local) else [os.path.join(d, f) for d, _, names in os.walk(local) for f in names]
    return {"" if f == local else os.path.relpath(f, local).replace(os.sep, "/"): pathlib.Path(f).read_bytes()
            for f in files}


# ------------------------------------------------------------------------------------ the lock
class WorkdirLockedError(RuntimeError):
    """Another run holds this workdir (or took it over from this run)."""


LOCK_RECORD = ".lock"  # local: the owner record beside the kernel lock
LOCK_OBJECT_PREFIX = ".lock-"  # object storage: one create-only object per lock generation
HEARTBEAT_SECONDS = 20.0
EXPIRY_SECONDS = 120.0  # an object-storage lock whose owner has not written for this long is free


@dataclasses.dataclass(frozen=True)
class Owner:
    """Who holds a lock: host, pid and the process's start time (so a reused pid is not taken for it)."""

    host: str
    pid: int
    started: int | None
    since: str
    heartbeat: float
    token: str
    kind: str = "run"  # what holds it, for the message: "pipeline run", "training run"

    @classmethod
    def me(cls, kind: str = "run") -> "Owner":
        return cls(socket.gethostname(), os.getpid(), _process_start(os.getpid()),
                   time.strftime("%Y-%m-%d %H:%M:%S"), time.time(), uuid.uuid4().hex, kind)

    @classmethod
    def parse(cls, data: bytes | str) -> "Owner | None":
        """The owner in a lock record; None for an unreadable one (an older format, a torn write)."""
        try:
            return cls(**json.loads(data))
        except (ValueError, TypeError):
            return None

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    def describe(self) -> str:
        where = "" if self.host == socket.gethostname() else f" on {self.host}"
        return f"pid {self.pid} since {self.since}{where}"

    def alive_here(self) -> bool:
        """This owner is a live process on this host (the same pid *and* the same start time)."""
        if self.host != socket.gethostname() or not _pid_alive(self.pid):
            return False
        started = _process_start(self.pid)
        return self.started is None or started is None or started == self.started

    def fresh(self, expiry: float = EXPIRY_SECONDS) -> bool:
        return time.time() - self.heartbeat < expiry


def _pid_alive(pid: int) -> bool:
    """The process exists and is not a zombie (a killed run its parent has not reaped yet)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        pass
    return _proc_stat(pid)[0] != b"Z"


def _proc_stat(pid: int) -> tuple[bytes | None, int | None]:
    """(state, start time in clock ticks since boot) from Linux /proc; (None, None) where unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return fields[0], int(fields[19])  # fields[0] is field 3 of stat(5) (the state), [19] field 22
    except (OSError, IndexError, ValueError):
        return None, None


def _process_start(pid: int) -> int | None:
    return _proc_stat(pid)[1]


def _locked(workdir: str, holder: Owner | None, how: str = "") -> WorkdirLockedError:
    who = holder.describe() if holder is not None else "a live process"
    kind = holder.kind if holder is not None else "run"
    return WorkdirLockedError(f"workdir {workdir} is in use by another {kind} ({who}{how}); "
                              "wait for it to finish or use another --workdir")


class LocalLock:
    """A kernel lock (flock) on the workdir directory itself, plus an owner record `.lock` for messages.

    The kernel lock is released when its process dies, so a killed run never blocks the next one,
    and it is held on the directory, not on a file inside it, so deleting `.lock` does not free it.
    Before taking it, a record naming a live process on this host refuses too (that also covers
    file systems without flock, where only the record remains).
    """

    def __init__(self, workdir: epath.Path, kind: str = "run"):
        self.dir = os.fspath(workdir)
        self.record = os.path.join(self.dir, LOCK_RECORD)
        self.me = Owner.me(kind)
        self.fd: int | None = None

    def _holder(self) -> Owner | None:
        try:
            with open(self.record, "rb") as f:
                return Owner.parse(f.read())
        except OSError:
            return None

    def acquire(self) -> None:
        try:
            os.makedirs(self.dir, exist_ok=True)
            fd = os.open(self.dir, os.O_RDONLY)
        except OSError as e:
            raise WorkdirError(e.errno, f"workdir {self.dir} is not writable: {e.strerror}") from None
        holder = self._holder()
        try:
            if holder is not None and holder.pid != os.getpid() and holder.alive_here():
                raise _locked(self.dir, holder)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno in (errno.EAGAIN, errno.EACCES):
                    raise _locked(self.dir, holder) from None
                if e.errno not in (errno.ENOLCK, errno.EBADF, errno.EOPNOTSUPP, errno.EINVAL):
                    raise
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        write_text(self.record, self.me.to_json())

    def check(self) -> None:
        """A kernel lock cannot be taken away from a live process: nothing to check."""

    def release(self) -> None:
        holder = self._holder()
        if holder is not None and holder.token == self.me.token:
            os.remove(self.record)
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class ObjectLock:
    """A lock on object storage: create-only lock objects `.lock-<n>`, an owner heartbeat, an expiry.

    The holder is the owner of the highest-numbered lock object. To take a free workdir (no lock
    object, or the newest one's owner silent for `expiry` seconds and not a live process on this
    host) a run creates the next number with create-only semantics (`ifGenerationMatch=0` on Cloud
    Storage through fsspec's `mode="create"`), so of two runs racing for it exactly one succeeds. The
    holder rewrites its object every `heartbeat` seconds; if it finds a higher number (it was silent
    for longer than `expiry` and another run took over) it marks the lock lost and `check()` raises.
    """

    def __init__(self, workdir: epath.Path, kind: str = "run", heartbeat: float = HEARTBEAT_SECONDS,
                 expiry: float = EXPIRY_SECONDS):
        import fsspec  # pylint: disable=import-outside-toplevel  (only object-storage workdirs need it)

        self.url = os.fspath(workdir)
        self.fs, self.root = fsspec.core.url_to_fs(self.url)
        self.heartbeat, self.expiry = heartbeat, expiry
        self.me = Owner.me(kind)
        self.number: int | None = None
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _object(self, number: int) -> str:
        return f"{self.root}/{LOCK_OBJECT_PREFIX}{number:08d}"

    def _numbers(self) -> list[int]:
        self.fs.invalidate_cache(self.root)  # listings are cached by some backends (gcsfs)
        try:
            names = [n.rsplit("/", 1)[-1] for n in self.fs.ls(self.root, detail=False)]
        except FileNotFoundError:
            return []
        return sorted(int(n[len(LOCK_OBJECT_PREFIX):]) for n in names
                      if n.startswith(LOCK_OBJECT_PREFIX) and n[len(LOCK_OBJECT_PREFIX):].isdigit())

    def _owner(self, number: int) -> Owner | None:
        try:
            return Owner.parse(self.fs.cat_file(self._object(number)))
        except FileNotFoundError:
            return None

    def acquire(self) -> None:
        for _ in range(5):  # a lost race re-reads the newest lock object
            numbers = self._numbers()
            if numbers:
                holder = self._owner(numbers[-1])
                if holder is not None and (holder.fresh(self.expiry) or holder.alive_here()):
                    raise _locked(self.url, holder, f", last heartbeat {time.time() - holder.heartbeat:.0f}s ago")
            number = numbers[-1] + 1 if numbers else 0
            try:
                self.fs.pipe_file(self._object(number), self.me.to_json().encode(), mode="create")
            except OSError:  # FileExistsError, or the store's own error for a failed precondition
                if not self.fs.exists(self._object(number)):
                    raise
                continue
            self.number = number
            break
        else:
            raise WorkdirLockedError(f"workdir {self.url}: could not take its lock (other runs kept taking it)")
        for stale in numbers:
            self.fs.rm(self._object(stale))
        self._thread = threading.Thread(target=self._beat, name="workdir-lock-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        last_ok = time.time()
        while not self._stop.wait(self.heartbeat):
            try:
                newest = self._numbers()[-1:] or [None]
                if newest[0] != self.number:
                    taker = self._owner(newest[0]) if newest[0] is not None else None
                    self.lost = f"taken over by {taker.describe() if taker else 'another run'}"
                    return
                self.me = dataclasses.replace(self.me, heartbeat=time.time())
                self.fs.pipe_file(self._object(self.number), self.me.to_json().encode())
                last_ok = time.time()
            except OSError as e:  # a transient storage error: retry until the lock would expire
                if time.time() - last_ok > self.expiry:
                    self.lost = f"no heartbeat written for {self.expiry:.0f}s ({e})"
                    return

    def check(self) -> None:
        """Raises if another run took the lock over (this one was silent for longer than the expiry)."""
        if self.lost:
            raise WorkdirLockedError(f"workdir {self.url}: this run lost its lock ({self.lost}); "
                                     "stopped before writing anything more")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.number is not None and not self.lost and self._numbers()[-1:] == [self.number]:
            self.fs.rm(self._object(self.number))


@contextlib.contextmanager
def workdir_lock(workdir: str | os.PathLike, hold: bool = True,
                 kind: str = "run") -> Iterator[LocalLock | ObjectLock | None]:
    """One run per workdir: holds the workdir's lock for the `with` block, refusing a workdir in use.

    hold=False (the other processes of a multi-process run, whose process 0 holds it) takes nothing.
    kind names this run in the message another run gets ("pipeline run", "training run").
    The lock's `check()` raises if it was lost (object storage only); writers call it before writing.
    """
    path = workdir_path(workdir)
    if not hold:
        yield None
        return
    lock = ObjectLock(path, kind) if is_remote(path) else LocalLock(path, kind)
    lock.acquire()
    try:
        yield lock
    finally:
        lock.release()
