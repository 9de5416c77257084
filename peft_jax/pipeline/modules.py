"""The module-training stages of one run or of several seeds: each kind's modules trained together.

The language modules of every language (and every seed, in a multi-seed run) share the base, the
model and the training section, and differ only in data and seed; so do the task modules. They are
trained `modules_per_step` at a time (0: all of a kind at once) in one jitted step over a module axis
(`peft_jax.train.train_together`): the base's matmuls run once over the rows of all of them, and each
module is the module its own run would give (tests/test_train_together.py). `modules_per_step=1`, or a
family whose structure changes mid-run (sparse with a dense phase), trains them one after another.

Each module keeps its own stage marker (`lang/<ℓ>`, `task/<ℓ>` in its run's `stages/`), written once
its group finished; a killed group resumes from the newest checkpoint all its modules have.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import jax

from peft_jax.pipeline.runner import Stages
from peft_jax.train.loop import plan_phases, train
from peft_jax.train.together import train_together

KINDS = ("lang", "task")


@dataclasses.dataclass(frozen=True)
class Job:
    """One module to train: the stage that records it, and how to make its training config."""

    stages: Stages  # its run's stages
    name: str  # 'lang/<ℓ>' or 'task/<ℓ>' (the stage's name)
    prepare: Callable[[], tuple[Any, str]]  # -> (training config, run directory); called only if it trains
    module_file: str  # where the finished module is (run directory / final_module)
    label: str = ""  # how the log names it (default: its name)

    @property
    def kind(self) -> str:
        return self.name.split("/", 1)[0]


def _pending(jobs: list[Job]) -> list[Job]:
    """The jobs whose stage has not finished (process 0's markers, on every process)."""
    out = []
    for st in {id(j.stages): j.stages for j in jobs}.values():
        mine = [j for j in jobs if j.stages is st]
        todo = set(st.pending([j.name for j in mine]))
        out.extend(j for j in mine if j.name in todo)
    return out


def train_all(jobs: list[Job], per_step: int = 0, log=print) -> list[str]:
    """Trains every unfinished job, kind by kind, `per_step` modules at a time; returns each job's module file."""
    pending = _pending(jobs)
    for kind in KINDS:
        todo = [j for j in pending if j.kind == kind]
        size = per_step or max(len(todo), 1)
        for i in range(0, len(todo), size):
            _train_group(todo[i:i + size], log)
    trained = {id(j) for j in pending}
    return [j.module_file if id(j) in trained else j.stages.run(j.name, lambda j=j: j.module_file) for j in jobs]


def _train_group(group: list[Job], log) -> None:
    """Trains `group` in one step over a module axis (or one by one), then writes each one's marker."""
    for j in group:
        j.stages.announce(j.name)
    prepared = [j.prepare() for j in group]
    configs, dirs = [c for c, _ in prepared], [d for _, d in prepared]
    start = time.time()
    if len(group) > 1 and len(plan_phases(configs[0])) == 1:
        train_together(configs, dirs)
        how = "together"
    else:
        for c, d in prepared:
            train(c, d)
        how = "one after another" if len(group) > 1 else "alone"
    seconds = time.time() - start
    for j in group:
        j.stages.record(j.name, j.module_file, seconds)
    if jax.process_index() == 0:
        log(f"[train] {len(group)} {group[0].kind} module(s) {how} in {seconds:.1f}s: "
            + ", ".join(j.label or j.name for j in group))
