"""Workdirs on object storage (gs://, through a mocked bucket) and the rules for resuming a training run.

The mock: fsspec's `gs`/`gcs` protocols (which etils.epath uses for gs:// when TensorFlow is absent) are
served by a local directory standing for the bucket, with create-only writes done by O_EXCL as Cloud
Storage does them with `ifGenerationMatch=0`; orbax's two calls that reach Cloud Storage without epath
are redirected to the same directory: `gcs_utils.get_kvstore_for_gcs` (the TensorStore driver that writes
the arrays; the mock returns TensorStore's `file` driver on the mapped path) and
`gcs_utils.is_hierarchical_namespace_enabled` (a bucket-metadata call; the mock says no). Everything else,
orbax's gs:// code paths included (commit-file instead of rename atomicity, gs:// deletion), runs
unchanged. So every byte a run writes, arrays included, lands in the mocked bucket; what the mock does
not cover is the network (retries, latency, credentials) and Cloud Storage's own consistency.
"""

import contextlib
import os
import pathlib
import shutil
import subprocess
import sys
import threading
import time
from unittest import mock

import fsspec
import jax
import numpy as np
import pytest
from etils.epath import backend as epath_backend
from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.local import LocalFileSystem
from orbax.checkpoint._src.path import gcs_utils

from peft_jax import fileio, peft
from peft_jax.train import loop, reporting

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from test_train_loop import _Crash, _assert_same, _crash_at, _tiny_config  # noqa: E402

BUCKET_ROOT = {"path": None}
_HNS_QUERY = gcs_utils.is_hierarchical_namespace_enabled
_FSSPEC_REGISTRY = sys.modules["fsspec.registry"]._registry  # `fsspec.registry` is its read-only view  # the local directory standing for gs:// (set by the fixture)


class FakeGCS(DirFileSystem):
    """gs://bucket/key served from BUCKET_ROOT/bucket/key; create-only writes are atomic (O_EXCL)."""

    protocol = ("gs", "gcs")
    cachable = False

    def __init__(self, *args, **kwargs):  # fsspec passes gcsfs options (finalize_on_close=...)
        super().__init__(path=BUCKET_ROOT["path"], fs=LocalFileSystem(auto_mkdir=True))

    @classmethod
    def _strip_protocol(cls, path):
        path = fsspec.utils.stringify_path(path)
        for prefix in ("gs://", "gcs://"):
            if path.startswith(prefix):
                path = path[len(prefix):]
        return path.rstrip("/")

    def pipe_file(self, path, value, mode="overwrite", **kwargs):
        if mode != "create":
            return super().pipe_file(path, value, **kwargs)
        local = self._join(self._strip_protocol(path))
        os.makedirs(os.path.dirname(local), exist_ok=True)
        with open(local, "xb") as f:  # FileExistsError when it exists, as gcsfs raises on a failed precondition
            f.write(value)


def _mapped(url: str) -> str:
    return os.path.join(BUCKET_ROOT["path"], FakeGCS._strip_protocol(url))


@pytest.fixture
def fake_gcs(tmp_path, monkeypatch):
    """A mocked gs:// (see the module docstring); yields the local directory holding the bucket."""
    BUCKET_ROOT["path"] = str(tmp_path / "bucket_store")
    os.makedirs(BUCKET_ROOT["path"])
    monkeypatch.setenv("EPATH_USE_TF", "false")
    for protocol in ("gs", "gcs"):
        fsspec.register_implementation(protocol, FakeGCS, clobber=True)
    epath_backend._FileSystemSpecBackend._get_filesystem.cache_clear()  # epath caches the file system
    monkeypatch.setattr(gcs_utils, "get_kvstore_for_gcs", lambda path: {"driver": "file", "path": _mapped(path)})
    monkeypatch.setattr(gcs_utils, "is_hierarchical_namespace_enabled", lambda path: False)
    monkeypatch.chdir(tmp_path)  # a local ./gs:/... folder would show up here
    yield pathlib.Path(BUCKET_ROOT["path"])
    for protocol in ("gs", "gcs"):
        _FSSPEC_REGISTRY.pop(protocol, None)
    epath_backend._FileSystemSpecBackend._get_filesystem.cache_clear()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished 4-step local run (checkpoints at 2 and 4)."""
    workdir = tmp_path_factory.mktemp("finished")
    config = _tiny_config(num_steps=4, tensorboard=False, eval_every=0)
    return config, workdir, loop.train(config, workdir)


# ------------------------------------------------------------------------------------ gs://
def test_killed_training_run_on_gs_resumes_there_to_the_params_of_a_local_run(fake_gcs, finished_run):
    config, _, local = finished_run
    config = _tiny_config(num_steps=4, tensorboard=True, eval_every=0)
    url = "gs://bucket/run"
    with pytest.raises(_Crash):
        loop.train(config, url, hooks=[_crash_at(3)])
    store = fake_gcs / "bucket" / "run"
    assert sorted(p.name for p in (store / "checkpoints").iterdir()) == ["2"]
    assert (store / "checkpoints" / "2" / "checksums.json").is_file()
    resumed = loop.train(config, url)
    _assert_same(local.module.params, resumed.module.params)
    # Every output is in the bucket, none became a local ./gs:/ folder.
    assert not pathlib.Path("gs:").exists()
    assert {"final_module", "metrics.jsonl", "train_config.json", "loss_curve.png", "tensorboard",
            "checkpoints"} <= {p.name for p in store.iterdir()}
    assert any(p.name.startswith("events") for p in (store / "tensorboard").iterdir())
    assert sorted(reporting.read_metrics(url)) == list(range(0, 5))
    module = peft.load(store / "final_module", base_params=resumed.params)
    _assert_same(module.params, local.module.params)
    assert not [p for p in store.iterdir() if p.name.startswith(".lock")]  # released


@contextlib.contextmanager
def no_gs_backend():
    """gs:// without gcsfs (or TensorFlow), whatever this machine has installed."""
    saved = {p: _FSSPEC_REGISTRY.pop(p) for p in ("gs", "gcs") if p in _FSSPEC_REGISTRY}
    epath_backend._FileSystemSpecBackend._get_filesystem.cache_clear()
    try:
        with mock.patch.dict(os.environ, {"EPATH_USE_TF": "false"}), mock.patch.dict(sys.modules, {"gcsfs": None}):
            yield
    finally:
        _FSSPEC_REGISTRY.update(saved)
        epath_backend._FileSystemSpecBackend._get_filesystem.cache_clear()


def test_gs_workdir_without_a_backend_is_a_clear_error_and_makes_no_local_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with no_gs_backend():
        for call in (lambda: loop.check_workdir("gs://bucket/run"), lambda: fileio.workdir_lock("gs://b/r").__enter__()):
            with pytest.raises(fileio.WorkdirError, match=r"no file-system backend for gs:// is installed.*pip install gcsfs"):
                call()
    with pytest.raises(fileio.WorkdirError, match=r"ftp:// is not a supported storage scheme"):
        fileio.workdir_path("ftp://host/run")
    assert list(tmp_path.iterdir()) == []


def test_gs_checkpoints_without_google_cloud_storage_are_a_clear_error(fake_gcs, monkeypatch):
    from peft_jax.train import checkpoints

    monkeypatch.setattr(gcs_utils, "is_hierarchical_namespace_enabled", _HNS_QUERY)  # orbax's own, unmocked
    monkeypatch.setitem(sys.modules, "google.cloud.storage", None)  # not installed (whatever this machine has)
    with pytest.raises(fileio.WorkdirError, match=r"orbax needs google-cloud-storage .*pip install google-cloud-storage"):
        checkpoints.Checkpoints("gs://bucket/run/checkpoints", keep=1)


# ------------------------------------------------------------------------- the object lock
def _object_lock(url, **kw):
    return fileio.ObjectLock(fileio.workdir_path(url), **kw)


def test_object_lock_refuses_a_live_owner_and_lets_exactly_one_racer_take_a_free_workdir(fake_gcs):
    first = _object_lock("gs://bucket/locked")
    first.acquire()
    with pytest.raises(fileio.WorkdirLockedError, match=r"in use by another run \(pid \d+ since [\d\- :]+, last heartbeat \d+s ago\)"):
        _object_lock("gs://bucket/locked").acquire()
    first.release()
    # Ten runs race for a free workdir: create-only lock objects let exactly one through.
    racers = [_object_lock("gs://bucket/raced") for _ in range(10)]
    outcomes = []

    def take(lock):
        try:
            lock.acquire()
            outcomes.append("held")
        except fileio.WorkdirLockedError:
            outcomes.append("refused")

    threads = [threading.Thread(target=take, args=(lock,)) for lock in racers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["held"] + ["refused"] * 9
    for lock in racers:
        if lock.number is not None:
            lock.release()


def test_object_lock_of_a_silent_owner_expires_and_the_old_owner_learns_it_lost_it(fake_gcs, monkeypatch):
    old = _object_lock("gs://bucket/w", heartbeat=0.05, expiry=0.3)
    old.acquire()
    old._stop.set()  # the owner stops heartbeating (a frozen VM) but is not dead on this host ...
    old._thread.join()
    monkeypatch.setattr(fileio.Owner, "alive_here", lambda self: False)  # ... it is on another host
    time.sleep(0.4)
    new = _object_lock("gs://bucket/w", heartbeat=0.05, expiry=0.3)
    new.acquire()
    assert new.number == 1
    # The new owner's heartbeat would rewrite its object while the old owner reads it: the mocked bucket
    # writes files in place, where Cloud Storage replaces an object whole.
    new._stop.set()
    new._thread.join()
    old._stop.clear()
    old._beat()  # the old owner's next heartbeat finds the newer lock object
    with pytest.raises(fileio.WorkdirLockedError, match="lost its lock.*taken over by pid"):
        old.check()
    new.release()


# ------------------------------------------------------------------------------ resume rules
def test_resuming_a_finished_run_with_fewer_steps_is_refused_naming_both(finished_run, tmp_path):
    config, workdir, _ = finished_run
    before = (workdir / "final_module").read_bytes()
    with pytest.raises(loop.ResumeError, match=r"checkpoint of step 4, past num_steps=3"):
        loop.train(_tiny_config(num_steps=3, tensorboard=False, eval_every=0), workdir)
    assert (workdir / "final_module").read_bytes() == before
    assert peft.load(workdir / "final_module").metadata["steps"] == 4


@pytest.mark.parametrize("field, value", [("peft.lora.rank", 4), ("optimizer.name", "adamw"), ("peft.family", "ia3")])
def test_resuming_with_another_peft_or_optimizer_config_names_the_field(finished_run, field, value):
    config, workdir, _ = finished_run
    with pytest.raises(loop.ResumeError, match=rf"another config \({field}: checkpoint .*, now {value!r}"):
        loop.train(_tiny_config(num_steps=4, tensorboard=False, eval_every=0, **{field: value}), workdir)


def test_a_checkpoint_of_another_rank_without_a_config_record_is_refused_not_an_orbax_traceback(finished_run,
                                                                                                tmp_path):
    _, workdir, _ = finished_run
    copy = tmp_path / "copy"
    shutil.copytree(workdir, copy)
    (copy / loop.RESUME_RECORD).unlink()  # a workdir written before the record existed
    with pytest.raises(loop.ResumeError, match=r"checkpoint of step 4 .* does not fit this run's module"):
        loop.train(_tiny_config(num_steps=6, tensorboard=False, eval_every=0, **{"peft.lora.rank": 4}), copy)


def test_empty_workdir_is_refused(tmp_path, monkeypatch):
    import importlib.util

    from peft_jax.pipeline import experiment

    monkeypatch.chdir(tmp_path)
    with pytest.raises(fileio.WorkdirError, match="workdir is empty"):
        loop.train(_tiny_config(), "")
    spec = importlib.util.spec_from_file_location("_demo_cfg", ROOT / "configs" / "demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    with pytest.raises(fileio.WorkdirError, match="workdir is empty"):
        experiment.run(demo.get_config("runlocal"), "")
    proc = subprocess.run([sys.executable, str(ROOT / "launch" / "train.py"),
                           "--config=configs/train.py:model=palm_tiny,source=tokens", "--workdir="],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode != 0 and "workdir is empty" in proc.stderr and "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []
