"""Runs the language-and-task-arithmetic experiment end to end (resumable).

  python launch/pipeline.py --config=configs/demo.py --workdir=runs/demo

`--dry_run` loads no weights and reads no data: it compiles every stage at the config's full size on
simulated devices and prints each stage's memory per device against `--config.dry_run_chip`
(docs/dry_run.md), exiting with status 1 when a stage does not fit.
"""

import sys

from absl import app, flags
from ml_collections import config_flags

from peft_jax import cli, distributed
from peft_jax.pipeline import dry_run, experiment

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "directory for every stage's outputs", required=True)
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "compile every stage at full size on simulated devices and "
                             "report per-device memory against config.dry_run_chip; nothing is trained")


def _dry_run(config) -> None:
    """Simulates the target's devices (before JAX starts), then compiles and measures every stage."""
    dry_run.simulate_devices(dry_run.target_of(config).devices)
    dry_run.run(config, _WORKDIR.value)


def main(argv):
    del argv
    config = _CONFIG.value
    if _DRY_RUN.value:
        sys.exit(cli.run(lambda: _dry_run(config)))
    # Joined here, before the first stage touches JAX; every training stage then runs with this same section.
    distributed.initialize(config.distributed)
    sys.exit(cli.run(lambda: experiment.run(config, _WORKDIR.value)))


if __name__ == "__main__":
    app.run(main)
