"""Orbax checkpoints of a PEFT training run: module params, optimizer state, step, RNG, data position.

Only what is trained is saved (the frozen base is re-created or re-loaded from
its own checkpoint). Saves are atomic (orbax writes a temporary directory and
renames it when every process has finished), the last `keep` are kept, and the
data-iterator position of *each* process is stored as its own small JSON file,
so a resumed run reads exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath


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


class Checkpoints:
    """The run's checkpoint directory: `save`, `latest_step`, `restore`."""

    def __init__(self, directory: str, keep: int):
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False)
        self.manager = ocp.CheckpointManager(epath.Path(directory).absolute(), options=options,
                                             item_names=("state", "data"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: dict, data_state: dict) -> None:
        """Saves `state` (a pytree of arrays: peft params, opt state, rng, ...) and the data position."""
        if self.manager.latest_step() == step:
            return  # already saved at this step (e.g. the final save right after a periodic one)
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                        data=DataStateSave(data_state)), force=True)
        self.manager.wait_until_finished()

    def restore(self, step: int, abstract_state: dict) -> tuple[dict, dict]:
        """(state, data_state) of `step`; `abstract_state` gives shapes, dtypes and shardings."""
        out = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                                                 data=DataStateRestore()))
        return out["state"], out["data"]

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
