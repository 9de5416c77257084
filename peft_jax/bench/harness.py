"""Runs benchmark jobs side by side: a fresh process per side, checked equal, then timed in alternation.

For each job (`cases.jobs`) the harness first has a `prepare` process write what both sides load (a
random Hugging Face checkpoint, the initial PEFT values). It then starts one worker per side (ours:
JAX; reference: PyTorch), pinned to the same cores with the same thread count. Each loads its model,
computes its check values (the first two training losses, or the decoded tokens), warms up and
reports ready. The harness refuses to time two sides that compute different things (`agreement`).
Repetitions then alternate (ours, reference, reference, ours, ...) so that a drift in machine load
hits both sides alike; only one side runs at a time. Peak resident memory is each worker's own.

Outputs in the workdir:
  benchmark.json          [{case, metric, ours, reference, ratio}] (ratio = ours / reference; reference
                          is the memory-bandwidth floor for composition, null where there is no counterpart)
                          (`tables`)
  benchmark_details.json  machine, configuration, check values, every repetition
  benchmark.png           ratios, composition vs its floor, scaling (`plots`)
  logs/                   each worker's stderr
"""

from __future__ import annotations

import json
import os
import platform
import time
from importlib import metadata

from peft_jax.bench import cases
from peft_jax.bench.agreement import check_agreement
from peft_jax.bench.plots import plot
from peft_jax.bench.processes import BenchmarkError, Worker
from peft_jax.bench.tables import SIDES, Row, format_table, rows_of

__all__ = ["BenchmarkError", "Row", "SIDES", "check_agreement", "describe_machine", "format_table", "plot",
           "prepare", "rows_of", "run", "run_job", "write_outputs"]


def _write_spec(job: dict, workdir: str) -> str:
    path = os.path.join(workdir, "specs", job["name"].replace("/", "_") + ".json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(job, f, indent=1)
    return path


def _log_path(workdir: str, job: dict, side: str) -> str:
    os.makedirs(os.path.join(workdir, "logs"), exist_ok=True)
    return os.path.join(workdir, "logs", f"{job['name'].replace('/', '_')}.{side}.log")


def prepare(job: dict, workdir: str) -> None:
    """Writes the job's checkpoint and PEFT init (if it has them and they are not there yet)."""
    if "checkpoint" not in job or cases.is_prepared(job):
        return
    w = Worker("prepare", _write_spec(job, workdir), _log_path(workdir, job, "prepare"), {})
    try:
        w.receive(job["name"])
    finally:
        w.close()


def _alternate(workers: dict[str, Worker], reps: int, name: str) -> dict[str, list[dict]]:
    """`reps` timed repetitions per side, one side at a time, the order flipped every round."""
    out: dict[str, list[dict]] = {side: [] for side in workers}
    order = list(workers)
    for i in range(reps):
        for side in order if i % 2 == 0 else order[::-1]:
            workers[side].send(cmd="run")
            out[side].append(workers[side].receive(name))
    return out


def run_job(job: dict, workdir: str, tol: dict) -> dict:
    """Runs one job on its sides: {side: {"ready": ..., "reps": [...], "done": ...}}."""
    spec_path = _write_spec(job, workdir)
    workers = {side: Worker(side, spec_path, _log_path(workdir, job, side), job["env"]) for side in job["sides"]}
    try:
        # Both sides set up (load, check, warm up) at once; nothing is timed until both are ready.
        ready = {side: w.receive(job["name"]) for side, w in workers.items()}
        check_agreement(job, {s: r["check"] for s, r in ready.items()}, tol)
        reps = _alternate(workers, job["reps"], job["name"])
        done = {}
        for side, w in workers.items():
            w.send(cmd="stop")
            done[side] = w.receive(job["name"])
    finally:
        for w in workers.values():
            w.close()
    return {side: {"ready": ready[side], "reps": reps[side], "done": done[side]} for side in workers}


def describe_machine() -> dict:
    """CPU, cores, memory, load and library versions, for the record."""
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    mem = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal"))
    versions = {}
    for pkg in ("jax", "jaxlib", "torch", "transformers", "peft", "numpy"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "mem_gib": round(mem / 2**20, 1),
            "load_avg": os.getloadavg(), "python": platform.python_version(), "kernel": platform.release(),
            "versions": versions}


def _dump(path: str, obj) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=1, default=str)


def write_outputs(workdir: str, rows: list[Row], jobs: list[dict], details: dict) -> None:
    """benchmark.json (rows), benchmark_details.json and benchmark.png."""
    with open(os.path.join(workdir, "benchmark.json"), "w") as f:
        json.dump([r.to_dict() for r in rows], f, indent=1)
    _dump(os.path.join(workdir, "benchmark_details.json"), details)
    plot(rows, jobs, os.path.join(workdir, "benchmark.png"))


def _run_one(job: dict, workdir: str, config, details: dict, load: tuple) -> dict | None:
    """One job's results, recorded in `details`; None (and the failure recorded) if it failed."""
    t0 = time.perf_counter()
    try:
        prepare(job, workdir)
        result = run_job(job, workdir, dict(config.check))
    except BenchmarkError as e:
        details["failures"][job["name"]] = str(e)
        return None
    details["jobs"][job["name"]] = {"spec": job, "results": result, "load_avg_at_start": load,
                                    "wall_s": time.perf_counter() - t0}
    _dump(os.path.join(workdir, "benchmark_details.json"), details)  # a crash later keeps what was measured
    return result


def run(config, workdir: str, log=print) -> list[dict]:
    """Runs every job of `config` and writes the outputs; returns the rows of benchmark.json.

    A job that fails (a worker error, or sides that disagree) is recorded and skipped, so one bad
    case does not cost an hour of others; once the outputs are written, BenchmarkError lists them.
    """
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    all_jobs = cases.jobs(config, workdir)
    details = {"machine_before": describe_machine(), "config": config.to_dict(), "jobs": {}, "failures": {}}
    results = {}
    for i, job in enumerate(all_jobs, 1):
        load = os.getloadavg()
        log(f"[{i}/{len(all_jobs)}] {job['name']} ({', '.join(job['sides'])}), load average {load[0]:.2f}")
        result = _run_one(job, workdir, config, details, load)
        if result is None:
            log(f"FAILED {job['name']}: {details['failures'][job['name']]}")
        else:
            results[job["name"]] = result
    details["machine_after"] = describe_machine()
    done = [j for j in all_jobs if j["name"] in results]
    rows = rows_of(done, results)
    write_outputs(workdir, rows, done, details)
    log(format_table(rows))
    if details["failures"]:
        raise BenchmarkError(f"{len(details['failures'])} job(s) failed: {sorted(details['failures'])}; "
                             f"see {os.path.join(workdir, 'benchmark_details.json')} and {workdir}/logs")
    return [r.to_dict() for r in rows]
