"""Case 6: how the LoRA training step of mT5-small scales with source length, batch size and device count.

Source lengths 128..1024 and batch sizes 1..8 on both sides; 1 vs 8 forced CPU devices
(--xla_force_host_platform_device_count, vocabulary and MLP split over a tensor-parallel axis) on ours only.

  python launch/benchmark.py --config=configs/bench/scaling.py --workdir=/tmp/bench_scaling
  python launch/benchmark.py --config=configs/bench/scaling.py:runlocal \
      --workdir=/tmp/bench_scaling_tiny  # tiny shapes

Every field of peft_jax.bench.cases.base_config can be overridden, e.g. --config.reps=3.
"""

from peft_jax.bench import cases


def get_config(arg=None):
    """The benchmark config; ':runlocal' shrinks every shape to seconds on a laptop."""
    config = cases.base_config(tiny=cases.parse_arg(arg, "configs/bench/scaling.py"))
    config.cases = ("scaling_src_len", "scaling_batch", "scaling_devices")
    return config
