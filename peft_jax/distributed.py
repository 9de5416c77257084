"""The one multi-host switch: every config's `distributed` section and how a process joins the others.

Every entry point (launch/train.py, pipeline.py, evaluate.py, compose.py) has the same section, so one
form turns multi-host on everywhere:

    --config.distributed.enabled=True                       # Cloud TPU: peers found from the TPU metadata
    --config.distributed.coordinator_address=host:port \\    # elsewhere (or simulated workers):
    --config.distributed.num_processes=N --config.distributed.process_id=I --config.distributed.cpu_collectives=gloo

Imports nothing of the package, so config files can build the section without loading the library.
"""

from __future__ import annotations

import jax
import ml_collections


def section() -> ml_collections.ConfigDict:
    """The `distributed` section every config carries (off by default)."""
    d = ml_collections.ConfigDict()
    d.enabled = False  # call jax.distributed.initialize (multi-host)
    d.coordinator_address = ""  # host:port of process 0; '' = auto-detect (TPU, SLURM)
    d.num_processes = -1  # -1 = auto-detect
    d.process_id = -1  # -1 = auto-detect
    d.cpu_collectives = ""  # 'gloo' for CPU-only multi-process runs
    return d


def initialize(cfg) -> None:
    """jax.distributed.initialize from a `distributed` section (before any other JAX call).

    Idempotent: the pipeline joins once at start and each training stage then finds the process joined.
    """
    if not cfg.enabled or jax.distributed.is_initialized():
        return
    if cfg.num_processes == 0 or (cfg.num_processes > 0 and cfg.process_id >= cfg.num_processes):
        raise ValueError(f"distributed.process_id={cfg.process_id} must lie in [0, num_processes="
                         f"{cfg.num_processes}); -1 auto-detects both")
    if cfg.cpu_collectives:  # CPU all-reduces across processes need an explicit implementation
        jax.config.update("jax_cpu_collectives_implementation", cfg.cpu_collectives)
    jax.distributed.initialize(coordinator_address=cfg.coordinator_address or None,
                               num_processes=cfg.num_processes if cfg.num_processes > 0 else None,
                               process_id=cfg.process_id if cfg.process_id >= 0 else None)


def run_on_process_zero(cfg, fn):
    """Joins the other processes (if the section says so), runs `fn` on process 0 only, then waits for it.

    For jobs with nothing to split (evaluation, composition): the others must still join, or process 0 would
    wait for them forever on a TPU slice, and must not write the same outputs. Returns fn's result on
    process 0 and None elsewhere.
    """
    initialize(cfg)
    result = fn() if jax.process_index() == 0 else None
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils  # only multi-process runs need the barrier
        multihost_utils.sync_global_devices("peft_jax: process 0 finished")
    return result
