"""Bad-input cases of the catalogue: training config values, workdirs and resume."""

from __future__ import annotations

from error_case_registry import case, expect, tiny  # noqa: F401


def _train_config(**changes):
    """The tiny training config of the tests with `changes` (dotted keys), rebuilt from a dict as a config
    read from JSON would be (ml_collections' own type checks do not see these values)."""
    from test_train_loop import _from_dict, _tiny_config

    return _from_dict(_tiny_config(), **changes)


def _check(**changes):
    from peft_jax.train import config_lib

    return expect(config_lib.ConfigError, config_lib.check_values, _train_config(**changes))


@case("training", "train config: `optimizer.learning_rate=nan`")
def _lr_nan(tmp):
    return _check(**{"optimizer.learning_rate": float("nan")})


@case("training", "train config: `num_steps=0`")
def _steps0(tmp):
    return _check(num_steps=0)


@case("training", "train config: a number given as text (`num_steps: \"3\"` in a JSON config)")
def _steps_text(tmp):
    return _check(num_steps="3")


@case("training", "train config: integer or boolean compute dtype (`model.dtype=int32`)")
def _int_dtype(tmp):
    return _check(**{"model.dtype": "int32"})


@case("training", "train config: AdamW `optimizer.b2=1.0` (its second moment would never move from 0)")
def _b2(tmp):
    return _check(**{"optimizer.b2": 1.0})


@case("training", "`--workdir=` (empty)")
def _empty_workdir(tmp):
    from peft_jax.train import loop

    return expect(loop.WorkdirError, loop.check_workdir, "")


@case("training", "a second `train.py` run on a workdir in use")
def _train_locked(tmp):
    from peft_jax.fileio import WorkdirLockedError, workdir_lock
    from peft_jax.train import loop

    with workdir_lock(tmp):
        return expect(WorkdirLockedError, loop.train, _train_config(), tmp)


@case("training", "resuming a finished 4-step run with `num_steps=3`")
def _fewer_steps(tmp):
    from peft_jax.train import loop

    return expect(loop.ResumeError, loop.check_resume, _train_config(num_steps=3), str(tmp), 4, "fingerprint")


@case("training", "resuming a run with another LoRA rank")
def _other_rank(tmp):
    from peft_jax.train import loop

    loop.check_resume(_train_config(), str(tmp), 0, "fingerprint")  # the first run records its config
    return expect(loop.ResumeError, loop.check_resume, _train_config(**{"peft.lora.rank": 4}), str(tmp), 2,
                  "fingerprint")


@case("training", "resuming on another base model")
def _other_base(tmp):
    from peft_jax.train import loop

    loop.check_resume(_train_config(), str(tmp), 0, "fingerprint-a")
    return expect(loop.ResumeError, loop.check_resume, _train_config(), str(tmp), 2, "fingerprint-b")
