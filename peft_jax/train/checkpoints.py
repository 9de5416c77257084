"""Orbax checkpoints of a PEFT training run: module params, optimizer state, step, RNG, data position.

Every finished checkpoint gets a manifest (`checksums.json`: sha256 of each of its files), written
after orbax has renamed it into place; on resume, the newest checkpoint whose manifest is present and
matches is used. A checkpoint with a missing manifest (the process died right after orbax's rename), a
missing or truncated file, or a changed byte is moved aside to `corrupt_<step>_<time>` — never
deleted — with a warning naming the file, and the previous one is used.

Only what is trained is saved (the frozen base is re-created or re-loaded from
its own checkpoint). Saves are atomic (orbax writes a temporary directory and
renames it when every process has finished), the last `keep` are kept, and the
data-iterator position of *each* process is stored as its own small JSON file,
so a resumed run reads exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
import warnings
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from peft_jax.fileio import atomic_write


class DataStateHandler(ocp.CheckpointHandler):
    """Saves/restores one JSON dict per process (`process_<i>-of-<n>.json`)."""

    def _file(self, directory: epath.Path) -> epath.Path:
        return directory / f"process_{jax.process_index()}-of-{jax.process_count()}.json"

    def save(self, directory: epath.Path, args: "DataStateSave"):
        self._file(directory).write_text(json.dumps(args.state, sort_keys=True))

    def restore(self, directory: epath.Path, args: "DataStateRestore | None" = None) -> dict:
        path = self._file(directory)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no data-iterator state for this process; was the checkpoint "
                                    f"written by a run with {jax.process_count()} process(es)?")
        return json.loads(path.read_text())

    def metadata(self, directory: epath.Path) -> Any:
        return None

    def finalize(self, directory: epath.Path):
        pass

    def close(self):
        pass


@ocp.args.register_with_handler(DataStateHandler, for_save=True)
@dataclasses.dataclass
class DataStateSave(ocp.args.CheckpointArgs):
    state: dict


@ocp.args.register_with_handler(DataStateHandler, for_restore=True)
@dataclasses.dataclass
class DataStateRestore(ocp.args.CheckpointArgs):
    pass


MANIFEST = "checksums.json"


class CheckpointWarning(UserWarning):
    """A checkpoint was found broken and set aside."""


def _digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _files(step_dir: str) -> list[str]:
    out = []
    for root, _, names in os.walk(step_dir):
        out += [os.path.relpath(os.path.join(root, n), step_dir) for n in names if n != MANIFEST]
    return sorted(out)


def write_manifest(step_dir: str) -> None:
    """sha256 of every file of a finished checkpoint, written atomically as its last file."""
    manifest = {f: _digest(os.path.join(step_dir, f)) for f in _files(step_dir)}
    atomic_write(os.path.join(step_dir, MANIFEST), lambda tmp: open(tmp, "w").write(json.dumps(manifest)),
                 overwrite=True)


def verify(step_dir: str) -> str | None:
    """None if the checkpoint matches its manifest, else what is wrong (naming the file)."""
    path = os.path.join(step_dir, MANIFEST)
    if not os.path.isfile(path):
        return f"{path} is missing (the save did not complete)"
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return f"{path} is corrupted"
    for name, digest in manifest.items():
        file = os.path.join(step_dir, name)
        if not os.path.isfile(file):
            return f"{file} is missing"
        if _digest(file) != digest:
            return f"{file} does not match its checksum (truncated or corrupted)"
    return None


class Checkpoints:
    """The run's checkpoint directory: `save`, `latest_step`, `restore`."""

    def __init__(self, directory: str, keep: int):
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False)
        self.manager = ocp.CheckpointManager(epath.Path(directory).absolute(), options=options,
                                             item_names=("state", "data"))

    def _step_dir(self, step: int) -> str:
        return os.fspath(self.manager.directory / str(step))

    def latest_step(self) -> int | None:
        """The newest checkpoint that verifies; broken newer ones are moved aside with a warning."""
        for step in sorted(self.manager.all_steps(), reverse=True):
            problem = verify(self._step_dir(step)) if jax.process_index() == 0 else None
            if problem is None:
                return step
            aside = os.fspath(self.manager.directory / f"corrupt_{step}_{int(time.time())}")
            warnings.warn(f"checkpoint at step {step} is unusable: {problem}; moved to {aside}, "
                          "resuming from the previous one", CheckpointWarning, stacklevel=2)
            os.rename(self._step_dir(step), aside)
            self.manager.reload()
        return None

    def save(self, step: int, state: dict, data_state: dict) -> None:
        """Saves `state` (a pytree of arrays: peft params, opt state, rng, ...) and the data position."""
        if self.manager.latest_step() == step:
            return  # already saved at this step (e.g. the final save right after a periodic one)
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                        data=DataStateSave(data_state)), force=True)
        self.manager.wait_until_finished()
        if jax.process_index() == 0:
            write_manifest(self._step_dir(step))

    def restore(self, step: int, abstract_state: dict) -> tuple[dict, dict]:
        """(state, data_state) of `step`; `abstract_state` gives shapes, dtypes and shardings."""
        out = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                                                 data=DataStateRestore()))
        return out["state"], out["data"]

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
