"""Trains one PEFT module on a frozen base: a thin entry point over peft_jax.train.train.

  python launch/train.py --config=configs/train.py:model=mt5_tiny,peft=lora,objective=span_corruption \
      --config.num_steps=40 --workdir=/tmp/run
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from peft_jax import cli
from peft_jax.train import config_lib, loop

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file, e.g. configs/train.py:model=...")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and the final module.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO
    sys.exit(cli.run(lambda: _train(_CONFIG.value, _WORKDIR.value)))


def _train(config, workdir: str) -> None:
    result = loop.train(config, workdir)
    print(f"final module: {result.workdir}/final_module (step {result.step}, loss {result.metrics.get('loss')})")


if __name__ == "__main__":
    try:
        config_lib.check_overrides(sys.argv)  # names unknown --config.<field> with the close ones
    except config_lib.ConfigError as e:
        sys.exit(f"error: {e}")
    app.run(main)
