"""Training modules together (one vmapped step) against one after another: a thin entry point.

  python launch/bench_together.py --config=configs/bench/together.py --workdir=/tmp/together

Writes WORKDIR/together.json and WORKDIR/together.md and prints the table. Run it on a quiet machine.
"""

import sys

from absl import app, flags
from ml_collections import config_flags

from peft_jax import cli
from peft_jax.bench import together

_CONFIG = config_flags.DEFINE_config_file("config", None, "Benchmark config: configs/bench/together.py")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and the results.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    sys.exit(cli.run(lambda: together.run(_CONFIG.value, _WORKDIR.value)))


if __name__ == "__main__":
    app.run(main)
