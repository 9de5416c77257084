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
import time
import warnings
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint._src.path import gcs_utils  # orbax asks a bucket its layout through google-cloud-storage

from peft_jax import fileio


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


def _digest(path: epath.Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(step_dir: str | epath.Path) -> None:
    """sha256 of every file of a finished checkpoint, written atomically as its last file."""
    step_dir = epath.Path(step_dir)
    manifest = {f: _digest(step_dir / f) for f in fileio.files_under(step_dir) if f != MANIFEST}
    fileio.write_text(step_dir / MANIFEST, json.dumps(manifest))


def verify(step_dir: str | epath.Path) -> str | None:
    """None if the checkpoint matches its manifest, else what is wrong (naming the file)."""
    path = epath.Path(step_dir) / MANIFEST
    if not path.exists():
        return f"{path} is missing (the save did not complete)"
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return f"{path} is corrupted"
    for name, digest in manifest.items():
        file = epath.Path(step_dir) / name
        if not file.exists() or file.is_dir():
            return f"{file} is missing"
        if _digest(file) != digest:
            return f"{file} does not match its checksum (truncated or corrupted)"
    return None


def _check_orbax_gcs(path: epath.Path) -> None:
    """Orbax lists gs:// checkpoints after asking the bucket's layout through google-cloud-storage: refuse
    now, naming the package, rather than with an ImportError from inside orbax at the first listing."""
    try:
        gcs_utils.is_hierarchical_namespace_enabled(path)
    except ImportError as e:
        raise fileio.WorkdirError(f"checkpoint directory {path}: orbax needs google-cloud-storage for gs:// "
                                  f"checkpoints ({e}); pip install google-cloud-storage") from None


class Checkpoints:
    """The run's checkpoint directory: `save`, `latest_step`, `restore`."""

    def __init__(self, directory: str, keep: int, guard: Callable[[], None] = lambda: None):
        """directory: local or gs://; guard: called before each save (the workdir lock's check)."""
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False)
        path = fileio.workdir_path(directory, "checkpoint directory")
        if fileio.scheme(path) == "gs":
            _check_orbax_gcs(path)
        self.manager = ocp.CheckpointManager(path, options=options, item_names=("state", "data"))
        self.guard = guard

    def _step_dir(self, step: int) -> epath.Path:
        return self.manager.directory / str(step)

    def latest_step(self) -> int | None:
        """The newest checkpoint that verifies; broken newer ones are moved aside with a warning."""
        for step in sorted(self.manager.all_steps(), reverse=True):
            problem = verify(self._step_dir(step)) if jax.process_index() == 0 else None
            if problem is None:
                return step
            aside = self.manager.directory / f"corrupt_{step}_{int(time.time())}"
            warnings.warn(f"checkpoint at step {step} is unusable: {problem}; moved to {aside}, "
                          "resuming from the previous one", CheckpointWarning, stacklevel=2)
            self._step_dir(step).rename(aside)
            self.manager.reload()
        return None

    def save(self, step: int, state: dict, data_state: dict) -> None:
        """Saves `state` (a pytree of arrays: peft params, opt state, rng, ...) and the data position."""
        if self.manager.latest_step() == step:
            return  # already saved at this step (e.g. the final save right after a periodic one)
        self.guard()
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
