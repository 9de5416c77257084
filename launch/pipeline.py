"""Runs the language-and-task-arithmetic experiment end to end (resumable).

  python launch/pipeline.py --config=configs/demo.py --workdir=runs/demo
"""

import sys

from absl import app, flags
from ml_collections import config_flags

from peft_jax import cli, distributed
from peft_jax.pipeline import experiment

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "directory for every stage's outputs", required=True)


def main(argv):
    del argv
    config = _CONFIG.value
    # Joined here, before the first stage touches JAX; every training stage then runs with this same section.
    distributed.initialize(config.distributed)
    sys.exit(cli.run(lambda: experiment.run(config, _WORKDIR.value)))


if __name__ == "__main__":
    app.run(main)
