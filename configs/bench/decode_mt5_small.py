"""Case 3: decoding 84-token summaries of 512-token inputs with mT5-small: greedy and beam 4 (length penalty 0.6).

peft_jax.generate (one jitted while-loop, KV cache) vs transformers generate; the tokens must be equal
before anything is timed. tokens/s counts generated tokens (up to EOS) of the batch.

  python launch/benchmark.py --config=configs/bench/decode_mt5_small.py --workdir=/tmp/bench_decode_mt5_small
  python launch/benchmark.py --config=configs/bench/decode_mt5_small.py:runlocal \
      --workdir=/tmp/bench_decode_mt5_small_tiny  # tiny shapes

Every field of peft_jax.bench.cases.base_config can be overridden, e.g. --config.reps=3.
"""

from peft_jax.bench import cases


def get_config(arg=None):
    """The benchmark config; ':runlocal' shrinks every shape to seconds on a laptop."""
    config = cases.base_config(tiny=cases.parse_arg(arg, "configs/bench/decode_mt5_small.py"))
    config.cases = ("decode_greedy", "decode_beam")
    return config
