"""Bad-input cases of the catalogue: config files, entry points and λ grids."""

from __future__ import annotations

import importlib.util
import pathlib

from error_case_registry import case, expect, tiny  # noqa: F401

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _config_module(name: str):
    spec = importlib.util.spec_from_file_location(f"_cfg_{name}", ROOT / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _demo(**changes):
    c = _config_module("demo").get_config("runlocal")
    for key, value in changes.items():
        c[key] = value
    return c


@case("config", "a mistyped config argument (`--config=configs/demo.py:runlocl`)")
def _cfg_typo(tmp):
    return expect(ValueError, _config_module("demo").get_config, "runlocl")


@case("config", "a config argument without its value (`configs/train.py:model=`)")
def _cfg_empty_value(tmp):
    return expect(ValueError, _config_module("train").get_config, "model=")


@case("config", "XL-Sum labeled languages without the source (`labeled=hindi`)")
def _cfg_labeled(tmp):
    return expect(ValueError, _config_module("xlsum_mt5").get_config, "runlocal,labeled=hindi")


@case("config", "an empty λ grid")
def _cfg_empty_grid(tmp):
    from peft_jax.pipeline import lambdas

    return expect(lambdas.LambdaProtocolError, lambdas.check, _demo(lambdas=()))


@case("config", "an unknown λ protocol")
def _cfg_protocol(tmp):
    from peft_jax.pipeline import lambdas

    return expect(lambdas.LambdaProtocolError, lambdas.check, _demo(lambda_protocol="best_on_test"))


@case("config", "λ on labeled languages when only the source is labeled")
def _cfg_source_validation(tmp):
    from peft_jax.pipeline import lambdas

    return expect(lambdas.LambdaProtocolError, lambdas.check,
                  _demo(lambda_protocol="source_validation", labeled_languages=("syn_en",)))


@case("config", "the same seed twice (`seeds=(1, 1)`)")
def _cfg_seeds(tmp):
    from peft_jax.pipeline import multi_seed

    return expect(multi_seed.SeedsError, multi_seed.check_seeds, (1, 1))


@case("config", "pipeline config: a training section with `optimizer.learning_rate=nan`")
def _cfg_pipeline_lr(tmp):
    from peft_jax.pipeline import experiment
    from peft_jax.train import config_lib

    config = _demo()
    config.task_train.optimizer.learning_rate = float("nan")
    return expect(config_lib.ConfigError, experiment.run_one, config, str(tmp / "w"))


@case("config", "`launch/pipeline.py --workdir=gs://...` without a gs:// backend (gcsfs) installed")
def _cfg_pipeline_gs_without_backend(tmp):
    from test_remote_workdir import no_gs_backend

    from peft_jax.fileio import WorkdirError
    from peft_jax.pipeline import experiment

    with no_gs_backend():
        return expect(WorkdirError, experiment.run, _demo(), "gs://bucket/run")


@case("config", "`launch/evaluate.py --workdir=gs://...` without a gs:// backend (gcsfs) installed")
def _cfg_evaluate_gs_without_backend(tmp):
    from test_remote_workdir import no_gs_backend

    from peft_jax import evaluate
    from peft_jax.fileio import WorkdirError

    with no_gs_backend():
        return expect(WorkdirError, evaluate.evaluate, _config_module("evaluate").get_config("runlocal"),
                      "gs://bucket/eval")
