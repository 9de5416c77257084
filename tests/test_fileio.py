"""File helpers: atomic writes keep the old file or the new one, and the workdir error is one class."""

import ast
import errno
import importlib.util
import pathlib

import pytest

from peft_jax import fileio
from peft_jax.peft import io as peft_io
from peft_jax.pipeline import runner
from peft_jax.train import loop

ROOT = pathlib.Path(__file__).resolve().parents[1]


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



def _evaluate_runlocal_config():
    spec = importlib.util.spec_from_file_location("_eval_cfg", ROOT / "configs" / "evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config("runlocal")


@pytest.mark.parametrize("entry", ["train", "pipeline", "evaluate"])
def test_remote_workdirs_are_refused_instead_of_becoming_local_folders(entry, tmp_path, monkeypatch):
    from peft_jax import evaluate

    monkeypatch.chdir(tmp_path)
    calls = {"train": lambda: loop.check_workdir("gs://bucket/run"),
             "pipeline": lambda: runner.workdir_lock("gs://bucket/run").__enter__(),
             "evaluate": lambda: evaluate.evaluate(_evaluate_runlocal_config(), "gs://bucket/run")}
    with pytest.raises(fileio.WorkdirError, match=r"'gs://bucket/run': remote gs:// paths are not supported"):
        calls[entry]()
    assert list(tmp_path.iterdir()) == []  # no local ./gs:/bucket/run was made


def test_local_paths_with_colons_are_not_mistaken_for_urls():
    assert fileio.require_local("runs/a:b") == "runs/a:b"
    assert fileio.require_local("runs/x://y") == "runs/x://y"  # the scheme must be a plain name
