"""Benchmarks: peft_jax side by side with PyTorch `transformers` + HF `peft`, and against the machine's limits.

  python launch/benchmark.py --config=configs/bench/train_mt5_small.py --workdir=DIR

`harness.run(config, workdir)` runs the cases of `config.cases` (see `cases`), each side in a fresh
process (`worker`): ours in JAX (`ours`), the reference in PyTorch (`reference`). Results land in
DIR/benchmark.json, DIR/benchmark_details.json and DIR/benchmark.png; docs/benchmarks.md discusses them.
This package imports neither JAX nor PyTorch itself: each worker imports only its own side.
"""

from peft_jax.bench.cases import CASES, CaseError, base_config
from peft_jax.bench.harness import BenchmarkError, Row, format_table, run

__all__ = ["CASES", "CaseError", "base_config", "BenchmarkError", "Row", "format_table", "run"]
