"""Case 1: a LoRA training step (r=8 on q,k,v,o) of mT5-small vs transformers + HF peft.

mT5-small dimensions (vocabulary 250,112, d_model 512, d_ff 1024, 8+8 layers, 6 heads of 64), random
weights (no download), batch 4 of 512 source / 84 target tokens, AdamW, float32; tokens/s, peak
resident memory and model FLOP utilisation against this machine's measured matmul peak.

  python launch/benchmark.py --config=configs/bench/train_mt5_small.py --workdir=/tmp/bench_train_mt5_small
  python launch/benchmark.py --config=configs/bench/train_mt5_small.py:runlocal \
      --workdir=/tmp/bench_train_mt5_small_tiny  # tiny shapes

Every field of peft_jax.bench.cases.base_config can be overridden, e.g. --config.reps=3.
"""

from peft_jax.bench import cases


def get_config(arg=None):
    """The benchmark config; ':runlocal' shrinks every shape to seconds on a laptop."""
    config = cases.base_config(tiny=cases.parse_arg(arg, "configs/bench/train_mt5_small.py"))
    config.cases = ("train_lora",)
    return config
