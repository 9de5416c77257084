"""File-system helpers shared by every part of the package: atomic writes and the workdir error.

This module imports nothing from peft_jax, so models, PEFT modules, training, the pipeline and
the benchmarks can all use it without creating an import cycle.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Callable


class WorkdirError(OSError, ValueError):
    """The work directory cannot be created or written.

    An OSError (it comes from the file system) and a ValueError (a bad `--workdir` setting), so
    callers that catch either keep catching it.
    """


def atomic_write(path: str | os.PathLike, write_fn: Callable[[str], object], overwrite: bool = False) -> None:
    """Calls write_fn(tmp_path), fsyncs, then renames onto `path`: a reader sees the old file or the new one."""
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


def read_json_beside(config_path: str, other_paths: tuple[str, ...], error: type[Exception], expected: str) -> dict:
    """The JSON object at `config_path`, once it and `other_paths` are all present.

    A missing file raises `error` naming it and what was `expected` there (e.g. "an HF peft adapter
    directory"), before anything is read.
    """
    for p in (config_path, *other_paths):
        if not os.path.isfile(p):
            raise error(f"{p}: missing (expected {expected})")
    with open(config_path, encoding="utf-8") as f:
        return json.load(f)


def require_local(path: str | os.PathLike, what: str = "workdir") -> str:
    """`path` as a string, refusing a URL (`gs://...`): workdir I/O is local-file-system only.

    Without this, `os.path.abspath("gs://b/x")` would quietly become a local folder `./gs:/b/x`.
    """
    path = os.fspath(path)
    scheme, sep, _ = path.partition("://")
    if sep and scheme.isidentifier():
        raise WorkdirError(f"{what} {path!r}: remote {scheme}:// paths are not supported; use a local path "
                           "(on Cloud TPU a local disk, then `launch/tpu/tpu.py fetch`)")
    return path
