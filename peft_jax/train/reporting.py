"""Run metrics: JSON lines and TensorBoard from process 0, and the loss-curve figure at the end.

Every file goes through `etils.epath` (`peft_jax.fileio`), so a gs:// workdir holds them too; TensorBoard
event files of a remote workdir are written by an epath-backed writer registered with tensorboardX.
"""

from __future__ import annotations

import io
import json
import math
import os

import numpy as np
from etils import epath

from peft_jax import fileio


class MetricWriter:
    """Appends `{"step": s, name: value, ...}` lines to metrics.jsonl and scalars to TensorBoard.

    Only the writer with `enabled=True` (process 0) touches the files. A resumed
    run appends; readers keep the last record of a step (`read_metrics`).
    """

    def __init__(self, workdir: str, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        if enabled and tensorboard:
            from tensorboardX import SummaryWriter  # imported lazily: it is slow to import
            if fileio.is_remote(workdir):
                _register_epath_event_writer(fileio.scheme(workdir))
            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        clean = {k: _plain(v) for k, v in metrics.items()}
        fileio.append_text(self.path, json.dumps({"step": int(step), **clean}, sort_keys=True) + "\n")
        if self._tb is not None:
            for k, v in clean.items():
                if isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, int(step))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _plain(v):
    """JSON-friendly scalar (numpy/jax scalars -> int/float; NaN/Inf kept as strings)."""
    v = np.asarray(v).item() if hasattr(v, "shape") or isinstance(v, np.generic) else v
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def read_metrics(workdir: str) -> dict[int, dict]:
    """{step: merged metrics} from metrics.jsonl (later lines win: a resumed run rewrites steps)."""
    path = epath.Path(os.fspath(workdir)) / "metrics.jsonl"
    out: dict[int, dict] = {}
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            out.setdefault(record.pop("step"), {}).update(record)
    return out


def loss_figure(records: dict[int, dict]):
    """A `matplotlib.figure.Figure` of the train (and eval) loss curves; None if no loss was logged.

    Drawn without pyplot, so the caller's matplotlib backend (e.g. a notebook's inline one) is
    left alone: a training run inside a notebook must not stop its later plots from showing.
    """
    series = {k: [(s, r[k]) for s, r in sorted(records.items()) if isinstance(r.get(k), (int, float))]
              for k in ("loss", "eval_loss")}
    if not series["loss"]:
        return None
    from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel  (slow to import)
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for name, points in series.items():
        if points:
            ax.plot(*zip(*points), marker="o" if name == "eval_loss" else None, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats / token)")
    ax.legend()
    ax.grid(alpha=0.3)
    return fig


def plot_losses(workdir: str, filename: str = "loss_curve.png") -> str | None:
    """Writes the train (and eval) loss curves to workdir/filename; None if nothing was logged."""
    fig = loss_figure(read_metrics(workdir))
    if fig is None:
        return None
    path = os.path.join(workdir, filename)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    fileio.write_bytes(path, buffer.getvalue())
    return path


class _EpathEventFile:
    """A tensorboardX record writer over epath: object storage has no append, so each flush rewrites
    the event file whole (every flush leaves a complete, readable file)."""

    def __init__(self, path: str):
        self.path, self.buffer = path, io.BytesIO()

    def write(self, data: bytes) -> None:
        self.buffer.write(data)

    def flush(self) -> None:
        fileio.write_bytes(self.path, self.buffer.getvalue())

    def close(self) -> None:
        self.flush()


class _EpathEventFactory:
    def open(self, path: str) -> _EpathEventFile:
        return _EpathEventFile(path)

    def directory_check(self, path: str) -> None:
        epath.Path(path).mkdir(parents=True, exist_ok=True)


def _register_epath_event_writer(scheme: str) -> None:
    """Routes tensorboardX's `<scheme>://` event files through epath (its own gs:// writer needs
    google-cloud-storage and bypasses the file-system backend the rest of the workdir uses)."""
    from tensorboardX import record_writer  # pylint: disable=import-outside-toplevel  (slow to import)

    record_writer.register_writer_factory(scheme, _EpathEventFactory())
