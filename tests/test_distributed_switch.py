"""The one `distributed` switch: every config carries the same section, the pipeline hands it to every training
stage, a resumed workdir does not care how processes met, and bad values are clear errors."""

import importlib.util
import pathlib

import pytest

from peft_jax import distributed
from peft_jax.pipeline import experiment

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = ["train.py:model=mt5_tiny", "demo.py:runlocal", "xlsum_mt5.py:runlocal", "xlsum_decoder.py:runlocal",
           "evaluate.py:runlocal", "compose/analogy.py", "compose/weighted.py", "compose/multi_source.py"]


def _config(spec: str):
    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("cfg", ROOT / "configs" / path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()


@pytest.mark.parametrize("spec", CONFIGS)
def test_every_config_has_the_same_section(spec):
    assert _config(spec).distributed.to_dict() == distributed.section().to_dict()


def test_the_pipeline_hands_the_switch_to_every_training_stage(monkeypatch, tmp_path):
    config = _config("demo.py:runlocal")
    config.distributed.enabled, config.distributed.num_processes = True, 4
    seen = []
    monkeypatch.setattr(experiment, "train", lambda cfg, run_dir: seen.append(cfg.distributed.to_dict()))
    paths = {"text_paths": "{language}.txt", "xlsum_dir": "x"}
    for kind in ("lang", "task"):
        experiment.train_module(config, str(tmp_path), kind, "english", paths, "tok.model", "base")
    assert seen == [config.distributed.to_dict()] * 2


def test_a_workdir_resumes_whatever_the_coordinator(tmp_path):
    config = _config("demo.py:runlocal")
    experiment.check_config(config, str(tmp_path))
    config.distributed.enabled, config.distributed.coordinator_address = True, "127.0.0.1:1234"
    experiment.check_config(config, str(tmp_path))  # no ConfigMismatchError
    config.seed = 1
    with pytest.raises(experiment.ConfigMismatchError):
        experiment.check_config(config, str(tmp_path))


def test_off_or_single_process_runs_the_job_here():
    assert distributed.run_on_process_zero(distributed.section(), lambda: "done") == "done"


def test_a_process_id_outside_the_count_is_a_clear_error():
    d = distributed.section()
    d.enabled, d.num_processes, d.process_id = True, 2, 2
    with pytest.raises(ValueError, match=r"process_id=2 must lie in \[0, num_processes=2\)"):
        distributed.initialize(d)
