"""Benchmarks peft_jax against PyTorch transformers + HF peft: a thin entry point over peft_jax.bench.

  python launch/benchmark.py --config=configs/bench/train_mt5_small.py --workdir=/tmp/bench
  python launch/benchmark.py --config=configs/bench/all.py:runlocal --workdir=/tmp/bench_tiny

Writes WORKDIR/benchmark.json, WORKDIR/benchmark_details.json and WORKDIR/benchmark.png and prints
the table of medians. Run it on a quiet machine: both sides share the same cores, one at a time.
"""

import sys

from absl import app, flags
from ml_collections import config_flags

from peft_jax import cli
from peft_jax.bench import harness

_CONFIG = config_flags.DEFINE_config_file("config", None, "Benchmark config, e.g. configs/bench/train_mt5_small.py")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and the results.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    sys.exit(cli.run(lambda: harness.run(_CONFIG.value, _WORKDIR.value)))


if __name__ == "__main__":
    app.run(main)
