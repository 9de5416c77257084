"""The training loop: a PEFT module trained on a frozen, sharded base, resumable and multi-host.

    result = train(config, workdir)        # config: configs/train.py:get_config(...)
    result.module                           # also at workdir/final_module (peft.load)

One run = one or two phases (sparse fine-tuning first trains a dense delta,
then keeps its top entries, see `peft_jax.train.sparse`); each phase has its
own module structure, optimizer and compiled step. Checkpoints hold the PEFT
params, the optimizer state, the RNG and each process's data position, so a
restarted run continues bit-exactly where the last checkpoint left off.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from tqdm import tqdm

from peft_jax import distributed, fileio
from peft_jax import peft as peft_lib
from peft_jax import tree as tree_lib
from peft_jax.fileio import WorkdirError, WorkdirLockedError, workdir_lock
from peft_jax.models import get_model
from peft_jax.train import checkpoints, config_lib, inputs, losses, optimizers, partitioning, reporting, sparse
from peft_jax.train import step as step_lib


Hook = Callable[[int, dict], None]


class NonFiniteLossError(FloatingPointError):
    """A step produced a NaN/Inf loss, gradient or parameter; the run stopped with its last good checkpoint kept."""


class ResumeError(ValueError):
    """The workdir's checkpoint was written by a run this one cannot continue (another config, more steps)."""


RESUME_RECORD = "train_config.json"  # what a resumed run must share with the run that wrote the checkpoints


@dataclasses.dataclass
class TrainResult:
    """What a finished run returns (the module is also saved at workdir/final_module)."""

    module: peft_lib.Module
    params: dict
    model: object
    step: int
    metrics: dict
    workdir: str


@dataclasses.dataclass(frozen=True)
class Phase:
    """Steps [start, stop) train one module structure: 'main', or LT-SFT's 'dense' then 'sparse'."""

    name: str
    start: int
    stop: int


# ------------------------------------------------------------------------------------ setup
def check_workdir(workdir: str) -> str:
    """Creates `workdir` if needed and proves it is writable; its absolute path or its gs:// URL.

    Refuses an empty path and a URL whose storage has no installed backend (`fileio.workdir_path`).
    """
    path = fileio.workdir_path(workdir)
    fileio.probe_writable(path)
    return os.fspath(path)


def rules_of(config) -> tuple:
    """Logical-axis rules from the config (tuples of (logical name, mesh axes))."""
    return tuple((name, tuple(axes) if isinstance(axes, list) else axes) for name, axes in config.logical_axis_rules)


def build_model(config, tok, mesh, rules):
    """(model, base params): a pretrained checkpoint, or a preset initialised directly into its sharding."""
    mcfg = config.model
    if mcfg.checkpoint:
        model, params = partitioning.load_base(mcfg.checkpoint, mesh, rules, compute_dtype=mcfg.dtype)
        params = _in_shardings(params, partitioning.base_shardings(model, mesh, rules))
        if tok is not None and tok.vocab_size > model.config.vocab_size:
            raise config_lib.ConfigError(f"tokenizer has {tok.vocab_size} ids but the checkpoint's vocabulary "
                                         f"has {model.config.vocab_size}")
        return model, params
    overrides = {"dtype": mcfg.dtype}
    if tok is not None:
        overrides["vocab_size"] = tok.vocab_size
    model = get_model(mcfg.name, **overrides)
    return model, partitioning.init_base(model, jax.random.PRNGKey(mcfg.init_seed), mesh, rules)


def _in_shardings(params: dict, shardings: dict) -> dict:
    """`params` with every leaf in its mesh sharding.

    A native checkpoint (the pipeline's pre-trained base) loads onto one local device whatever the
    requested shardings; in a multi-process run such arrays are not part of the global mesh and jit
    refuses them, so they are placed here (each process holds the whole tensor and gives its slices).
    """
    def place(x, sharding):
        if x.sharding.is_equivalent_to(sharding, x.ndim):
            return x
        host = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda idx: host[idx])

    return jax.tree.map(place, params, shardings)


def plan_phases(config) -> list[Phase]:
    """[main] or, for sparse fine-tuning with a dense phase, [dense, sparse]."""
    n = int(config.num_steps)
    dense = int(round(float(config.peft.sparse.dense_fraction) * n)) if config.peft.family == "sparse" else 0
    dense = min(dense, n - 1)  # at least one step of the sparse phase, so the module is always selected
    if dense == 0:
        return [Phase("main" if config.peft.family != "sparse" else "sparse", 0, n)]
    return [Phase("dense", 0, dense), Phase("sparse", dense, n)]


def phase_at(phases: Sequence[Phase], step: int) -> Phase:
    """The phase that runs the step after `step` completed steps (the last one once training ended)."""
    return next((p for p in phases if p.start <= step < p.stop), phases[-1])


# ------------------------------------------------------------------------------- the state
@dataclasses.dataclass
class _Static:
    """Everything fixed for the whole run."""

    config: object
    model: object
    params: dict
    mesh: object
    rules: tuple
    pcfg: object
    repl: object
    params_sharding: object
    batch_sharding: object
    fold_in: Callable  # per-step dropout key, replicated on the mesh
    nonfinite: Callable  # params -> per-leaf "holds a NaN/Inf" flags, replicated


@dataclasses.dataclass
class _PhaseRun:
    """One phase's module, optimizer and compiled steps."""

    phase: Phase
    module: peft_lib.Module
    opt_state: object
    schedule: Callable
    step_fn: Callable
    eval_fn: Callable
    compiled: bool = False  # step_fn compiled (and the compiler's memory released) for this phase


def _module_fn(s: _Static, phase: Phase):
    """A function (rng, params, previous module or None) -> the phase's fresh module."""
    def make(rng, params, previous=None):
        if phase.name == "dense":
            return sparse.dense_module(s.model, s.pcfg)
        if phase.name == "sparse" and previous is not None:
            return sparse.select(previous, s.pcfg.density)
        return peft_lib.init(s.model, s.pcfg, rng, params=params)

    return make


@dataclasses.dataclass(frozen=True)
class _PhaseParts:
    """What every module of one phase shares: its jitted constructor, shardings, optimizer and steps."""

    make: Callable  # jitted (rng, base params, previous module or None) -> the phase's fresh module
    peft_sharding: object
    optimizer: object
    schedule: Callable
    opt_init: Callable  # jitted trainable params -> optimizer state in `opt_sharding`
    opt_sharding: object
    eval_fn: Callable


def _phase_parts(s: _Static, phase: Phase, rng, previous=None) -> _PhaseParts:
    """The phase's module constructor, shardings, optimizer and eval step (its train step: `_start_phase`)."""
    make = _module_fn(s, phase)
    abstract = jax.eval_shape(make, rng, s.params, previous)
    peft_sh = partitioning.peft_shardings(s.model, abstract, s.mesh, s.rules, s.config.peft.sharding)
    optimizer, schedule = optimizers.make_optimizer(s.config.optimizer, phase.stop - phase.start)
    placed = jax.tree.map(lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh), abstract, peft_sh)
    opt_sh = step_lib.opt_state_shardings(optimizer, placed, s.mesh)
    eval_fn = step_lib.jit_eval_step(model=s.model, peft_sharding=peft_sh, params_sharding=s.params_sharding,
                                     batch_sharding=s.batch_sharding, out_sharding=s.repl, z_loss=s.config.z_loss)
    return _PhaseParts(jax.jit(make, out_shardings=peft_sh), peft_sh, optimizer, schedule,
                       jax.jit(optimizer.init, out_shardings=opt_sh), opt_sh, eval_fn)


def _start_phase(s: _Static, phase: Phase, rng, previous=None) -> _PhaseRun:
    """Creates the phase's module (placed in its sharding), optimizer state and jitted steps."""
    parts = _phase_parts(s, phase, rng, previous)
    module = parts.make(rng, s.params, previous)
    opt_state = parts.opt_init(step_lib.trainable(module.params))
    step_fn = step_lib.jit_train_step(model=s.model, optimizer=parts.optimizer, peft_sharding=parts.peft_sharding,
                                      opt_sharding=parts.opt_sharding, params_sharding=s.params_sharding,
                                      batch_sharding=s.batch_sharding, scalar_sharding=s.repl,
                                      z_loss=s.config.z_loss, micro_batches=s.config.micro_batches)
    return _PhaseRun(phase, module, opt_state, parts.schedule, step_fn, parts.eval_fn)


def _abstract(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def _restore(ckpts: checkpoints.Checkpoints, step: int, run: _PhaseRun, rng, it) -> tuple[_PhaseRun, jax.Array]:
    """Loads the checkpoint of `step` into a freshly started phase (shapes and shardings from it)."""
    state = {"peft": run.module.params, "opt_state": run.opt_state, "rng": rng}
    restored, data_state = ckpts.restore(step, _abstract(state))
    it.set_state(data_state)
    run = dataclasses.replace(run, module=run.module.replace(params=restored["peft"]),
                              opt_state=restored["opt_state"])
    return run, restored["rng"]


def base_fingerprint(params: dict) -> str:
    """`peft.fingerprint` of the base (it samples leaves split across processes inside a jit)."""
    return peft_lib.fingerprint(params)


# ------------------------------------------------------------------------------- the steps
def _evaluate(s: _Static, run: _PhaseRun, tok, shard) -> dict:
    """Mean loss / accuracy over the first `eval_steps` held-out batches (the same ones every time)."""
    cfg = s.config
    it = inputs.make_iterator(cfg.data, s.model, cfg.objective, tok, shard, "eval", cfg.seed)
    total = None
    for _ in range(cfg.eval_steps):
        host = losses.prepare_batch(next(it), s.model, cfg.objective, s.model.config.pad_id)
        sums = run.eval_fn(run.module, s.params, partitioning.global_batch(host, s.mesh, cfg.batch_size, s.rules))
        total = sums if total is None else jax.tree.map(jnp.add, total, sums)
    total = jax.device_get(total)
    w = max(float(total["weight"]), 1.0)
    return {"eval_loss": float(total["nll"]) / w, "eval_accuracy": float(total["correct"]) / w}


def _one_step(s: _Static, run: _PhaseRun, host_batch: dict, rng, step: int) -> tuple[_PhaseRun, dict]:
    """Runs train step number `step` (0-based) and returns host metrics."""
    cfg = s.config
    batch = losses.prepare_batch(host_batch, s.model, cfg.objective, s.model.config.pad_id)
    batch = partitioning.global_batch(batch, s.mesh, cfg.batch_size, s.rules)
    step_rng = s.fold_in(rng, step)
    if not run.compiled:
        step_lib.compile_step(run.step_fn, run.module, run.opt_state, s.params, batch, step_rng)
        run = dataclasses.replace(run, compiled=True)
    t0 = time.perf_counter()
    module, opt_state, metrics = run.step_fn(run.module, run.opt_state, s.params, batch, step_rng)
    metrics = {k: np.asarray(v).item() for k, v in jax.device_get(metrics).items()}
    dt = time.perf_counter() - t0
    if not metrics["finite"]:
        raise NonFiniteLossError(f"non-finite loss or gradient at step {step + 1} (loss={metrics['loss']}, "
                                 f"grad_norm={metrics['grad_norm']}); stopped without saving it: the last "
                                 f"good checkpoint is kept")
    # A finite loss and gradient can still give non-finite parameters (an overflowing update); such a
    # module must never reach a checkpoint or the final module file.
    bad = [p for p, flag in tree_lib.flatten(jax.device_get(s.nonfinite(module.params))).items() if flag]
    if bad:
        raise NonFiniteLossError(f"step {step + 1} made the module's parameters non-finite ({', '.join(bad[:3])}"
                                 f"{', ...' if len(bad) > 3 else ''}; loss={metrics['loss']}, "
                                 f"grad_norm={metrics['grad_norm']}); stopped without saving it: the last good "
                                 "checkpoint is kept")
    metrics.update(step_time=dt, tokens_per_sec=metrics["tokens"] / max(dt, 1e-9),
                   learning_rate=float(run.schedule(step - run.phase.start)))
    return dataclasses.replace(run, module=module, opt_state=opt_state), metrics


def _save(ckpts, step: int, run: _PhaseRun, rng, it) -> None:
    ckpts.save(step, {"peft": run.module.params, "opt_state": run.opt_state, "rng": rng}, it.get_state())


def _export(s: _Static, run: _PhaseRun, workdir: str, fingerprint: str, step: int) -> peft_lib.Module:
    """Saves the final module (replicated first, so process 0 holds every value) with its provenance."""
    module = jax.jit(lambda m: m, out_shardings=s.repl)(run.module)
    cfg = s.config
    meta = {"base_fingerprint": fingerprint, "model": cfg.model.checkpoint or cfg.model.name,
            "objective": cfg.objective, "language": cfg.data.language, "data_source": cfg.data.source,
            "steps": step, "seed": cfg.seed, **inputs.module_metadata(cfg.data, s.model, cfg.objective),
            **cfg.get("metadata", {})}
    module = module.with_metadata(**meta)
    if jax.process_index() == 0:
        peft_lib.save(os.path.join(workdir, "final_module"), module, overwrite=True)
    return module


# -------------------------------------------------------------------------------- the loop
def _setup(config, workdir: str):
    """Mesh, tokenizer, model, base params and shardings of a run."""
    config_lib.check_values(config)
    mesh = partitioning.make_mesh(dict(config.mesh))
    rules = rules_of(config)
    partitioning.check_batch(config.batch_size, mesh, rules, config.micro_batches)
    tok = _tokenizer(config, workdir)
    model, params = build_model(config, tok, mesh, rules)
    losses.required_keys(model, config.objective)
    repl = partitioning.replicated(mesh)
    batch_sh = jax.sharding.NamedSharding(mesh, partitioning.batch_spec(rules))
    nonfinite = jax.jit(lambda tree: jax.tree.map(lambda x: ~jnp.all(jnp.isfinite(x)), tree), out_shardings=repl)
    s = _Static(config, model, params, mesh, rules, config_lib.peft_config(config.peft), repl,
                step_lib.shardings_of(params), batch_sh, jax.jit(jax.random.fold_in, out_shardings=repl), nonfinite)
    shard = inputs.Shard(partitioning.local_rows(mesh, config.batch_size, rules), config.batch_size)
    return s, tok, shard


def _tokenizer(config, workdir: str):
    """`inputs.build_tokenizer` with its trained model kept at workdir/tokenizer.model, local or remote.

    The tokenizer code reads and writes local files, so for a remote workdir it works on a local copy
    of that file (`fileio.local_path`), whose new model process 0 alone uploads.
    """
    with fileio.local_path(os.path.join(workdir, "tokenizer.model"), upload=jax.process_index() == 0) as saved:
        return inputs.build_tokenizer(config.data, config.objective, os.path.dirname(saved))


def check_resume(config, workdir: str, start: int, fingerprint: str) -> None:
    """Refuses to continue a checkpoint that this config cannot continue; records the config on a fresh start.

    A checkpoint past `num_steps` would otherwise be exported relabelled with fewer steps, and one of
    another PEFT config (rank, family, targets) would fail deep inside orbax; both name what differs.
    """
    record = os.path.join(workdir, RESUME_RECORD)
    current = {**config_lib.resume_record(config), "base_fingerprint": fingerprint}
    if not start:
        if jax.process_index() == 0:
            fileio.write_text(record, json.dumps(current, indent=1, sort_keys=True))
        return
    if start > int(config.num_steps):
        raise ResumeError(f"workdir {workdir} holds a checkpoint of step {start}, past num_steps="
                          f"{config.num_steps}: a run of {start} steps cannot be continued to {config.num_steps}; "
                          f"set num_steps >= {start} or use another --workdir")
    if epath.Path(record).exists():
        diff = config_lib.resume_differences(fileio.read_json(record), current)
        if diff:
            raise ResumeError(f"workdir {workdir} holds checkpoints of a run with another config ("
                              f"{'; '.join(diff[:6])}{'; ...' if len(diff) > 6 else ''}); resume with the same "
                              "config or use another --workdir")


def train(config, workdir: str, *, hooks: Sequence[Hook] = (),
          train_iter: inputs.BatchIterator | None = None) -> TrainResult:
    """Trains the configured PEFT module; resumes from workdir's latest checkpoint if there is one.

    workdir: a local directory or a gs:// URL (see docs/remote_workdirs.md); process 0 holds its lock
      for the whole run, so a second run on it is refused.
    hooks: called as hook(completed_steps, metrics) after every step, on every process.
    train_iter: batches to train on instead of the config's data section (this
      process's rows of each global batch; see `inputs.BatchIterator`).
    Raises NonFiniteLossError (naming the step) on a NaN/Inf loss or parameter, keeping the last good
    checkpoint, and ResumeError when the workdir's checkpoints cannot be continued with this config.
    """
    distributed.initialize(config.distributed)  # joins the other processes (see peft_jax.distributed)
    workdir = check_workdir(workdir)
    with workdir_lock(workdir, hold=jax.process_index() == 0, kind="training run") as lock:
        return _train(config, workdir, hooks, train_iter, lock.check if lock else (lambda: None))


def _train(config, workdir: str, hooks, train_iter, guard: Callable[[], None]) -> TrainResult:
    s, tok, shard = _setup(config, workdir)
    phases = plan_phases(config)
    rng = jax.jit(lambda: jax.random.PRNGKey(config.seed), out_shardings=s.repl)()
    it = train_iter or inputs.make_iterator(config.data, s.model, config.objective, tok, shard, "train", config.seed)
    fingerprint = base_fingerprint(s.params)
    ckpts = checkpoints.Checkpoints(os.path.join(workdir, "checkpoints"), config.keep_checkpoints, guard=guard)
    writer = None
    try:
        start = ckpts.latest_step() or 0
        check_resume(config, workdir, start, fingerprint)
        run = _start_phase(s, phase_at(phases, start), rng)
        if start:
            run, rng = _restore_checked(ckpts, start, run, rng, it, workdir)
            if jax.process_index() == 0:
                print(f"resumed from the checkpoint of step {start} in {workdir}", flush=True)
        writer = reporting.MetricWriter(workdir, enabled=jax.process_index() == 0, tensorboard=config.tensorboard)
        run, metrics = _run_steps(s, run, phases, start, rng, it, tok, shard, ckpts, writer, hooks)
        _save(ckpts, int(config.num_steps), run, rng, it)
    finally:
        ckpts.close()
        if writer is not None:
            writer.close()
    guard()
    module = _export(s, run, workdir, fingerprint, int(config.num_steps))
    if jax.process_index() == 0:
        reporting.plot_losses(workdir)
    return TrainResult(module, s.params, s.model, int(config.num_steps), metrics, workdir)


def _restore_checked(ckpts, start: int, run: _PhaseRun, rng, it, workdir: str):
    """`_restore`, with orbax's error for a checkpoint of another structure turned into one that says so."""
    try:
        return _restore(ckpts, start, run, rng, it)
    except (ValueError, KeyError, TypeError) as e:
        first = (str(e).strip().splitlines() or [""])[0][:300]
        raise ResumeError(f"the checkpoint of step {start} in {workdir} does not fit this run's module and "
                          f"optimizer state ({type(e).__name__}: {first}); it was written with another PEFT or "
                          "optimizer config: resume with that config or use another --workdir") from None


def _run_steps(s, run, phases, start, rng, it, tok, shard, ckpts, writer, hooks):
    """Steps start..num_steps: logging, evaluation, checkpoints and the switch between phases."""
    cfg = s.config
    log_counts = lambda step: writer.write(step, {f"params_{k}": v for k, v in
                                                  peft_lib.count(s.params, run.module).items()})
    log_counts(start)
    bar = tqdm(total=cfg.num_steps, initial=start, disable=jax.process_index() != 0 or not cfg.progress_bar,
               desc="train", dynamic_ncols=True)
    metrics: dict = {}
    for step in range(start, cfg.num_steps):
        run, metrics = _one_step(s, run, next(it), rng, step)
        done = step + 1
        if done == run.phase.stop and done < cfg.num_steps:  # LT-SFT: dense phase over, keep the top entries
            run = _start_phase(s, phase_at(phases, done), rng, previous=run.module)
            log_counts(done)
        for hook in hooks:
            hook(done, metrics)
        if cfg.eval_every and cfg.eval_steps and (done % cfg.eval_every == 0 or done == cfg.num_steps):
            metrics.update(_evaluate(s, run, tok, shard))
        if done % cfg.log_every == 0 or done == cfg.num_steps or "eval_loss" in metrics:
            writer.write(done, metrics)
        if done % cfg.checkpoint_every == 0:
            _save(ckpts, done, run, rng, it)
        bar.update(1)
        bar.set_postfix(loss=f"{metrics['loss']:.4f}", refresh=False)
    bar.close()
    return run, metrics
