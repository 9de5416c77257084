"""Decodes XL-Sum with a base and (composed) PEFT modules, scores it, writes predictions, tables and a plot.

  python launch/evaluate.py --config=configs/evaluate.py:runlocal --workdir=/tmp/eval

A thin entry point over peft_jax.evaluate.evaluate; see configs/evaluate.py for every setting.
"""

import os
import sys

from absl import app, flags, logging
from etils import epath
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from peft_jax import cli, distributed, evaluate  # noqa: E402
from peft_jax.train import config_lib  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Evaluation config, e.g. configs/evaluate.py:runlocal")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory (or gs:// URL) for predictions/, results.{md,csv,png}, "
                                "config.json.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    config = _CONFIG.value
    sys.exit(cli.run(lambda: _evaluate(config, _WORKDIR.value)))


def _evaluate(config, workdir: str) -> None:
    """Evaluates on process 0 and prints results.md (the other processes of a multi-host run wait)."""
    rows = distributed.run_on_process_zero(config.distributed, lambda: evaluate.evaluate(config, workdir))
    if rows is not None:
        print(epath.Path(workdir, "results.md").read_text())


if __name__ == "__main__":
    try:
        config_lib.check_overrides(sys.argv)  # names an unknown --config.<field> with the close ones
    except config_lib.ConfigError as e:
        sys.exit(f"error: {e}")
    app.run(main)
