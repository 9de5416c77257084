"""Benchmarks: peft_jax side by side with PyTorch `transformers` + HF `peft`, and against the machine's limits.

  python launch/benchmark.py --config=configs/bench/train_mt5_small.py --workdir=DIR

`harness.run(config, workdir)` runs the cases of `config.cases` (see `cases`), each side in a fresh
process (`processes` on the harness's end, `worker` on the other): ours in JAX (`ours`), the reference
in PyTorch (`reference`, which imports PyTorch only when it runs: it is a test extra). Before timing,
`agreement` checks that both sides compute the same thing; `tables` and `plots` turn the repetitions
into DIR/benchmark.json and DIR/benchmark.png (with DIR/benchmark_details.json beside them);
docs/benchmarks.md discusses them. This package imports neither JAX nor PyTorch itself: each worker
imports only its own side.
"""

from peft_jax.bench.cases import CASES, CaseError, base_config
from peft_jax.bench.harness import run
from peft_jax.bench.processes import BenchmarkError
from peft_jax.bench.tables import Row, format_table

__all__ = ["CASES", "CaseError", "base_config", "BenchmarkError", "Row", "format_table", "run"]
