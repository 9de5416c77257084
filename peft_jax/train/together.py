"""Several PEFT modules trained together: one jitted step over a leading module axis.

    results = train_together([config_a, config_b, ...], [workdir_a, workdir_b, ...])

The modules share the frozen base, the model, the PEFT and optimizer sections and the step count; they
may differ only in `TOGETHER_FREE` (seed: initialisation, data order, dropout; data path and language;
metadata). Each step stacks one batch per module into [K, B, ...] and runs `jax.vmap` of the one-module
`train_step` over the module axis, with the base unmapped: every base matmul is one product over the
rows of all K modules, while each module's update is exactly its own run's (its own loss
normalisation, gradient clipping, optimizer state and non-finite check).

Each workdir gets what `train(config, workdir)` writes: `train_config.json`, checkpoints of that
module's own state and data position, `metrics.jsonl`, the loss curve and `final_module`. A run killed
part-way resumes from the newest step every module has checkpointed, with this function or with
`train` one module at a time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from peft_jax import distributed
from peft_jax import peft as peft_lib
from peft_jax.fileio import workdir_lock
from peft_jax.train import checkpoints, config_lib, inputs, loop, losses, partitioning, reporting
from peft_jax.train import step as step_lib

# The fields in which modules trained together may differ (dotted prefixes).
TOGETHER_FREE = ("seed", "data.paths", "data.eval_paths", "data.language", "metadata")


def check_together(configs: Sequence) -> None:
    """Refuses configs that cannot share one step, naming the first field that differs and both values."""
    if not configs:
        raise config_lib.ConfigError("train_together needs at least one config")
    free = lambda path: any(path == f or path.startswith(f + ".") for f in TOGETHER_FREE)
    ref = {p: config_lib.get_field(configs[0], p) for p in config_lib.field_paths(configs[0]) if not free(p)}
    for i, c in enumerate(configs[1:], 1):
        cur = {p: config_lib.get_field(c, p) for p in config_lib.field_paths(c) if not free(p)}
        diff = sorted(k for k in set(ref) | set(cur) if ref.get(k) != cur.get(k))
        if diff:
            k = diff[0]
            raise config_lib.ConfigError(f"modules trained together may differ only in {TOGETHER_FREE}: config {i} "
                                         f"has {k}={cur.get(k)!r}, config 0 has {ref.get(k)!r}")
    if len(loop.plan_phases(configs[0])) > 1:
        raise config_lib.ConfigError("peft.family='sparse' with a dense phase changes the module's structure "
                                     "mid-run; train such modules one at a time (train)")
    if configs[0].data.source != "tokens" and not configs[0].data.tokenizer:
        raise config_lib.ConfigError("modules trained together need data.tokenizer (one vocabulary for all); "
                                     "a tokenizer trained on each module's own data would differ")


def train_together(configs: Sequence, workdirs: Sequence[str]) -> list[loop.TrainResult]:
    """Trains one module per (config, workdir) in one jitted step; resumes each from its checkpoints.

    Raises ConfigError (naming the field) for configs that cannot train together, and the errors of
    `train` (NonFiniteLossError naming the module's workdir, ResumeError, WorkdirLockedError).
    """
    if len(configs) != len(workdirs):
        raise ValueError(f"{len(configs)} configs but {len(workdirs)} workdirs")
    check_together(configs)
    for c in configs:
        config_lib.check_values(c)
    distributed.initialize(configs[0].distributed)
    workdirs = [loop.check_workdir(w) for w in workdirs]
    if len(set(workdirs)) != len(workdirs):
        raise ValueError(f"every module needs its own workdir, got {workdirs}")
    writer = jax.process_index() == 0
    with contextlib.ExitStack() as stack:
        locks = [stack.enter_context(workdir_lock(w, hold=writer, kind="training run")) for w in workdirs]
        guard = lambda: [lock.check() for lock in locks if lock]
        return _train_together(configs, workdirs, guard)


@dataclasses.dataclass
class _Member:
    """One module of the group: its config, workdir, data, checkpoints and (between steps) its state."""

    static: loop._Static
    workdir: str
    run: loop._PhaseRun
    rng: jax.Array
    it: inputs.BatchIterator
    ckpts: checkpoints.Checkpoints
    writer: reporting.MetricWriter | None = None
    metrics: dict = dataclasses.field(default_factory=dict)  # the last step's


def _stack(trees):
    """Trees of one structure stacked leaf by leaf along a new leading axis."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _leading(sharding):
    """`sharding` with a replicated leading (module) axis in front."""
    return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(None, *sharding.spec))


def _train_together(configs, workdirs, guard) -> list[loop.TrainResult]:
    """The run behind `train_together`, its workdirs checked and locked (`loop._train` for K modules)."""
    s, tok, shard = loop._setup(configs[0], workdirs[0])
    phase = loop.plan_phases(configs[0])[0]
    key = jax.jit(jax.random.PRNGKey, static_argnums=0, out_shardings=s.repl)
    rngs = [key(int(c.seed)) for c in configs]
    parts = loop._phase_parts(s, phase, rngs[0])
    fingerprint = loop.base_fingerprint(s.params)
    members = []
    try:
        for c, w, rng in zip(configs, workdirs, rngs):
            sk = dataclasses.replace(s, config=c)
            module = parts.make(rng, s.params, None)
            run = loop._PhaseRun(phase, module, parts.opt_init(step_lib.trainable(module.params)), parts.schedule,
                                 None, parts.eval_fn)
            it = inputs.make_iterator(c.data, s.model, c.objective, tok, shard, "train", c.seed)
            members.append(_Member(sk, w, run, rng, it, checkpoints.Checkpoints(
                os.path.join(w, "checkpoints"), c.keep_checkpoints, guard=guard)))
        start = _resume(members, fingerprint)
        for m in members:
            m.writer = reporting.MetricWriter(m.workdir, enabled=jax.process_index() == 0,
                                              tensorboard=m.static.config.tensorboard)
        _run_steps(s, parts, members, start, tok, shard)
        for m in members:
            loop._save(m.ckpts, int(configs[0].num_steps), m.run, m.rng, m.it)
    finally:
        for m in members:
            m.ckpts.close()
            if m.writer is not None:
                m.writer.close()
    guard()
    results = []
    for m in members:
        module = loop._export(m.static, m.run, m.workdir, fingerprint, int(configs[0].num_steps))
        if jax.process_index() == 0:
            reporting.plot_losses(m.workdir)
        results.append(loop.TrainResult(module, s.params, s.model, int(configs[0].num_steps), m.metrics,
                                            m.workdir))
    return results


def _resume(members: list[_Member], fingerprint: str) -> int:
    """The step all modules continue from (the newest every one has checkpointed); restores it into each."""
    latest = [m.ckpts.latest_step() or 0 for m in members]
    start = min(latest)
    for m, last in zip(members, latest):
        loop.check_resume(m.static.config, m.workdir, start, fingerprint)
        if start and start not in m.ckpts.manager.all_steps():
            raise loop.ResumeError(f"{m.workdir} has no checkpoint of step {start}, the newest step every module "
                                   f"trained together has (its own newest: {last}); resume it alone with train, "
                                   "or use other workdirs")
        if start:
            m.run, m.rng = loop._restore_checked(m.ckpts, start, m.run, m.rng, m.it, m.workdir)
    if start and jax.process_index() == 0:
        print(f"resumed {len(members)} modules from their checkpoints of step {start}", flush=True)
    return start


def _jit_step(s: loop._Static, parts: loop._PhaseParts, k: int):
    """The vmapped train step over K modules, jitted with the module axis in front of every sharding."""
    cfg = s.config
    one = functools.partial(step_lib.train_step, model=s.model, optimizer=parts.optimizer, z_loss=cfg.z_loss,
                            micro_batches=cfg.micro_batches)

    def step(modules, opt_states, params, batches, rngs, i):
        keys = jax.vmap(lambda r: jax.random.fold_in(r, i))(rngs)
        return jax.vmap(one, in_axes=(0, 0, None, 0, 0))(modules, opt_states, params, _stack(batches), keys)

    lead = lambda tree: jax.tree.map(_leading, tree)
    module_sh, opt_sh, repl_k = lead(parts.peft_sharding), lead(parts.opt_sharding), _leading(s.repl)
    return jax.jit(step, in_shardings=(module_sh, opt_sh, s.params_sharding, s.batch_sharding, repl_k, s.repl),
                   out_shardings=(module_sh, opt_sh, repl_k), donate_argnums=(0, 1)), (module_sh, opt_sh, repl_k)


def _unstack_into(members: list[_Member], take, modules, opt_states) -> None:
    """Copies each module's slice of the stacked state into its member (for checkpoints, eval, export).

    take: the jitted (tree, k) -> slice k, made once per run so it compiles once.
    """
    for k, m in enumerate(members):
        module, opt_state = take((modules, opt_states), k)
        m.run = dataclasses.replace(m.run, module=module, opt_state=opt_state)


def _check_finite(members: list[_Member], metrics: dict, bad_params: np.ndarray, step: int) -> None:
    """NonFiniteLossError naming the first module whose loss, gradient or parameters went non-finite."""
    for k, m in enumerate(members):
        if not metrics["finite"][k] or bad_params[k]:
            what = "loss or gradient" if not metrics["finite"][k] else "parameters"
            raise loop.NonFiniteLossError(
                f"{m.workdir}: non-finite {what} at step {step + 1} (loss={metrics['loss'][k]}, grad_norm="
                f"{metrics['grad_norm'][k]}); stopped without saving it: the last good checkpoints are kept")


def _run_steps(s, parts, members: list[_Member], start: int, tok, shard) -> None:
    """Steps start..num_steps of every module together, with each module's logging, eval and checkpoints."""
    cfg, k = s.config, len(members)
    step_fn, (module_sh, opt_sh, repl_k) = _jit_step(s, parts, k)
    stack_to = lambda trees, sh: jax.jit(_stack, out_shardings=sh)(trees)
    modules = stack_to([m.run.module for m in members], module_sh)
    opt_states = stack_to([m.run.opt_state for m in members], opt_sh)
    rngs = stack_to([m.rng for m in members], repl_k)
    take = jax.jit(lambda tree, i: jax.tree.map(lambda x: x[i], tree),
                   out_shardings=(parts.peft_sharding, parts.opt_sharding))
    nonfinite = jax.jit(lambda t: jnp.any(jnp.stack([~jnp.all(jnp.isfinite(x), axis=tuple(range(1, x.ndim)))
                                                     for x in jax.tree.leaves(t)]), axis=0), out_shardings=s.repl)
    bar = tqdm(total=cfg.num_steps, initial=start, disable=jax.process_index() != 0 or not cfg.progress_bar,
               desc=f"train {k} modules", dynamic_ncols=True)
    for m in members:
        m.writer.write(start, {f"params_{n}": v for n, v in peft_lib.count(s.params, m.run.module).items()})
    for step in range(start, cfg.num_steps):
        batches = tuple(partitioning.global_batch(losses.prepare_batch(next(m.it), s.model, cfg.objective,
                                                                            s.model.config.pad_id),
                                                  s.mesh, cfg.batch_size, s.rules) for m in members)
        t0 = time.perf_counter()
        modules, opt_states, metrics = step_fn(modules, opt_states, s.params, batches, rngs, step)
        metrics = {n: np.asarray(v) for n, v in jax.device_get(metrics).items()}
        dt = time.perf_counter() - t0
        _check_finite(members, metrics, np.asarray(jax.device_get(nonfinite(modules.params))), step)
        done = step + 1
        evaluate = cfg.eval_every and cfg.eval_steps and (done % cfg.eval_every == 0 or done == cfg.num_steps)
        save = done % cfg.checkpoint_every == 0
        if evaluate or save or done == cfg.num_steps:
            _unstack_into(members, take, modules, opt_states)
        lr = float(parts.schedule(step - members[0].run.phase.start))
        for i, m in enumerate(members):
            row = {n: v[i].item() for n, v in metrics.items()}
            row.update(step_time=dt, tokens_per_sec=row["tokens"] / max(dt, 1e-9), learning_rate=lr)
            if evaluate:
                row.update(loop._evaluate(m.static, m.run, tok, shard))
            if done % cfg.log_every == 0 or done == cfg.num_steps or evaluate:
                m.writer.write(done, row)
            if save:
                loop._save(m.ckpts, done, m.run, m.rng, m.it)
            m.metrics = row
        bar.update(1)
        bar.set_postfix(loss=f"{float(np.mean(metrics['loss'])):.4f}", refresh=False)
    bar.close()
