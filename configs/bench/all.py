"""Every benchmark case, in one run: the table of docs/benchmarks.md.

Machine peak (matmul GFLOP/s, copy bandwidth), training (LoRA, prompt, (IA)^3, decoder-only LoRA),
decoding (greedy, beam 4), composition (N = 2..64, mT5-xxl shapes) and scaling. About an hour on
two cores.

  python launch/benchmark.py --config=configs/bench/all.py --workdir=/tmp/bench_all
  python launch/benchmark.py --config=configs/bench/all.py:runlocal \
      --workdir=/tmp/bench_all_tiny  # tiny shapes

Every field of peft_jax.bench.cases.base_config can be overridden, e.g. --config.reps=3.
"""

from peft_jax.bench import cases


def get_config(arg=None):
    """The benchmark config; ':runlocal' shrinks every shape to seconds on a laptop."""
    config = cases.base_config(tiny=cases.parse_arg(arg, "configs/bench/all.py"))
    config.cases = cases.CASES
    return config
