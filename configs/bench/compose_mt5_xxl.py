"""Case 4: composing N = 2..64 LoRA modules (r=8 on q,k,v,o) with mT5-xxl shapes under each strategy.

Each (strategy, N) runs in a fresh process; the reference is the memory-bandwidth floor, (bytes read +
bytes written) / the copy bandwidth measured in the same run. combine_s is compose.combine end to end
(checks, fingerprints, provenance); kernel_s is its jitted arithmetic alone, run under
jax.transfer_guard('disallow'). Dense-delta strategies run on the first 8 targets only.

  python launch/benchmark.py --config=configs/bench/compose_mt5_xxl.py --workdir=/tmp/bench_compose_mt5_xxl
  python launch/benchmark.py --config=configs/bench/compose_mt5_xxl.py:runlocal \
      --workdir=/tmp/bench_compose_mt5_xxl_tiny  # tiny shapes

Every field of peft_jax.bench.cases.base_config can be overridden, e.g. --config.reps=3.
"""

from peft_jax.bench import cases


def get_config(arg=None):
    """The benchmark config; ':runlocal' shrinks every shape to seconds on a laptop."""
    config = cases.base_config(tiny=cases.parse_arg(arg, "configs/bench/compose_mt5_xxl.py"))
    config.cases = ("compose",)
    return config
