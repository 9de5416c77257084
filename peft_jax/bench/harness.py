"""Runs benchmark jobs side by side: a fresh process per side, checked equal, then timed in alternation.

For each job (`cases.jobs`) the harness first has a `prepare` process write what both sides load (a
random Hugging Face checkpoint, the initial PEFT values). It then starts one worker per side (ours:
JAX; reference: PyTorch), pinned to the same cores with the same thread count. Each loads its model,
computes its check values (the first two training losses, or the decoded tokens), warms up and
reports ready. The harness refuses to time two sides that compute different things. Repetitions
then alternate (ours, reference, reference, ours, ...) so that a drift in machine load hits both
sides alike; only one side runs at a time. Peak resident memory is each worker's own.

Outputs in the workdir:
  benchmark.json          [{case, metric, ours, reference, ratio}] (ratio = ours / reference; reference
                          is the memory-bandwidth floor for composition, null where there is no counterpart)
  benchmark_details.json  machine, configuration, check values, every repetition
  benchmark.png           ratios, composition vs its floor, scaling
  logs/                   each worker's stderr
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from importlib import metadata

from peft_jax.bench import cases

_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The PyTorch worker gets a bare `peft_jax` package object, so importing peft_jax.bench.reference does
# not run peft_jax/__init__.py, which imports JAX (a few hundred MB that are not PyTorch's).
_BOOTSTRAP = f"""
import sys, types
if sys.argv[1] == "reference":
    pkg = types.ModuleType("peft_jax")
    pkg.__path__ = [{_PACKAGE_ROOT!r}]
    sys.modules["peft_jax"] = pkg
from peft_jax.bench import worker
worker.main()
"""
SIDES = ("ours", "reference")


class BenchmarkError(RuntimeError):
    """A worker failed, or the two sides of a job do not compute the same thing."""


@dataclasses.dataclass
class Row:
    """One line of the results table."""

    case: str
    metric: str
    ours: float | None
    reference: float | None

    @property
    def ratio(self) -> float | None:
        if self.ours is None or not self.reference:
            return None
        return self.ours / self.reference

    def to_dict(self) -> dict:
        return {"case": self.case, "metric": self.metric, "ours": self.ours, "reference": self.reference,
                "ratio": self.ratio}


# -------------------------------------------------------------------------------------- workers
class Worker:
    """One side of one job in its own process, spoken to in JSON lines."""

    def __init__(self, side: str, spec_path: str, log_path: str, env: dict):
        self.side, self.log_path = side, log_path
        self._log = open(log_path, "w")
        full_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false",
                    "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        self.proc = subprocess.Popen([sys.executable, "-c", _BOOTSTRAP, side, spec_path], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._log, text=True, env=full_env)

    def _tail(self, n: int = 25) -> str:
        self._log.flush()
        with open(self.log_path, errors="replace") as f:
            return "".join(f.readlines()[-n:])

    def receive(self, job: str) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            raise BenchmarkError(f"job {job}: the {self.side} worker exited (code {code}) without a reply; "
                                 f"last lines of {self.log_path}:\n{self._tail()}")
        msg = json.loads(line)
        if msg.get("event") == "error":
            raise BenchmarkError(f"job {job}: the {self.side} side failed: {msg['message']}\n{msg['traceback']}")
        return msg

    def send(self, **cmd) -> None:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._log.close()


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


# ------------------------------------------------------------------------------------- checking
def _close(a: float, b: float, atol: float, rtol: float) -> bool:
    return abs(a - b) <= atol + rtol * abs(b)


def check_agreement(job: dict, checks: dict[str, dict], tol: dict) -> None:
    """Raises BenchmarkError unless both sides computed the same thing (losses within tolerance, equal tokens)."""
    if len(checks) < 2:
        return
    ours, ref = checks["ours"], checks["reference"]
    if job["kind"] == "train":
        for i, (a, b) in enumerate(zip(ours["losses"], ref["losses"])):
            if not _close(a, b, tol["loss_atol"], tol["loss_rtol"]):
                raise BenchmarkError(f"job {job['name']}: training loss of step {i + 1} differs: ours {a:.6f}, "
                                     f"reference {b:.6f} (tolerance {tol['loss_atol']} + {tol['loss_rtol']} * |ref|)")
    if job["kind"] == "decode":
        # Up to and including EOS: what follows is padding, which transformers fills with EOS and we with pad.
        cut = lambda rows: [r[:n] for r, n in zip(rows, cases.generated_lengths(rows, job["model"].get("eos_id", 1)))]
        for row, (a, b) in enumerate(zip(cut(ours["tokens"]), cut(ref["tokens"]))):
            if a != b:
                pos = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
                raise BenchmarkError(f"job {job['name']}: decoded tokens of row {row} differ from position {pos}: "
                                     f"ours {a[pos:pos + 5]}..., reference {b[pos:pos + 5]}...")


# -------------------------------------------------------------------------------------- running
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


# ---------------------------------------------------------------------------------------- rows
def _median(result: dict | None, fn) -> float | None:
    if result is None:
        return None
    return statistics.median(fn(r) for r in result["reps"])


def _pair(job: dict, results: dict, metric: str, fn, reference: float | None = None) -> Row:
    ref = _median(results.get("reference"), fn) if reference is None else reference
    return Row(job["name"], metric, _median(results.get("ours"), fn), ref)


def _peak(results: dict, side: str) -> float | None:
    return results[side]["done"]["peak_rss_mb"] if side in results else None


def _train_rows(job: dict, results: dict, peak_gflops: float | None) -> list[Row]:
    tokens, flops = cases.train_tokens(job), cases.train_flops(job)
    rows = [_pair(job, results, "tokens_per_s", lambda r: tokens / r["seconds"]),
            _pair(job, results, "step_s", lambda r: r["seconds"]),
            Row(job["name"], "peak_rss_mb", _peak(results, "ours"), _peak(results, "reference"))]
    if peak_gflops:
        mfu = lambda r: flops / r["seconds"] / (peak_gflops * 1e9)
        rows.append(_pair(job, results, "mfu", mfu))
    return rows


def _compose_rows(job: dict, results: dict, bandwidth: float | None) -> list[Row]:
    """Composition against its floors: time vs (bytes read + written) / bandwidth, memory vs the result's size."""
    ours = results["ours"]
    check = ours["ready"]["check"]
    floor_s = (check["in_bytes"] + check["out_bytes"]) / bandwidth if bandwidth else None
    mib = 2.0**20
    return [_pair(job, results, "combine_s", lambda r: r["combine_s"], floor_s),
            _pair(job, results, "kernel_s", lambda r: r["kernel_s"], floor_s),
            Row(job["name"], "kernel_mb", check["kernel_bytes"] / mib, check["out_bytes"] / mib),
            Row(job["name"], "peak_rss_mb", _peak(results, "ours"), (check["in_bytes"] + check["out_bytes"]) / mib)]


def rows_of(jobs: list[dict], results: dict[str, dict]) -> list[Row]:
    """The table: medians per metric and side; MFU from the machine's matmul peak, composition vs its floor."""
    rows: list[Row] = []
    peak = bandwidth = None
    machine = next((j for j in jobs if j["kind"] == "machine"), None)
    if machine:
        res = results[machine["name"]]
        work = res["ours"]["ready"]["check"]
        flops = Row("machine/matmul_f32", "gflops", *(_median(res[s], lambda r: work["flops"] / r["matmul_s"] / 1e9)
                                                        for s in SIDES))
        copy = Row("machine/copy", "gb_per_s", *(_median(res[s], lambda r: work["bytes"] / r["copy_s"] / 1e9)
                                                  for s in SIDES))
        # The machine's limits, whichever library reaches them.
        peak, bandwidth = max(flops.ours, flops.reference), 1e9 * max(copy.ours, copy.reference)
        rows += [flops, copy]
    for job in jobs:
        res = results[job["name"]]
        if job["kind"] == "train":
            rows += _train_rows(job, res, peak)
        elif job["kind"] == "decode":
            rows += [_pair(job, res, "tokens_per_s", lambda r: r["tokens"] / r["seconds"]),
                     _pair(job, res, "batch_s", lambda r: r["seconds"]),
                     Row(job["name"], "peak_rss_mb", _peak(res, "ours"), _peak(res, "reference"))]
        elif job["kind"] == "compose":
            rows += _compose_rows(job, res, bandwidth)
    return rows


# ------------------------------------------------------------------------------------- reporting
def _fmt(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:,.0f}"


def format_table(rows: list[Row]) -> str:
    """Markdown table of the rows (ratio = ours / reference)."""
    lines = ["| case | metric | ours | reference | ratio |", "|---|---|---:|---:|---:|"]
    lines += [f"| {r.case} | {r.metric} | {_fmt(r.ours)} | {_fmt(r.reference)} | {_fmt(r.ratio)} |" for r in rows]
    return "\n".join(lines)


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


def _sweep(rows: list[Row], jobs: list[dict], prefix: str) -> list[tuple[int, float, float | None, float]]:
    """[(x, ours step s, reference step s, model FLOPs)] of one scaling sweep, e.g. prefix 'scaling/batch='."""
    flops = {j["name"]: cases.train_flops(j) for j in jobs if j["name"].startswith(prefix)}
    return sorted((int(r.case[len(prefix):]), r.ours, r.reference, flops[r.case]) for r in rows
                  if r.case in flops and r.metric == "step_s")


def _plot_ratios(ax, rows: list[Row], jobs: list[dict]) -> None:
    pairs = [r for r in rows if r.ratio is not None and not r.case.startswith(("scaling/", "compose/"))
             and r.metric in ("tokens_per_s", "peak_rss_mb", "mfu", "gflops", "gb_per_s")]
    colors = ["tab:orange" if r.metric == "peak_rss_mb" else "tab:blue" for r in pairs]
    ax.barh([f"{r.case} {r.metric}" for r in pairs], [r.ratio for r in pairs], color=colors)
    ax.axvline(1.0, color="black", lw=1)
    for goal, label in ((0.8, "memory goal"), (1.5, "training goal"), (2.0, "decoding goal")):
        ax.axvline(goal, color="gray", ls=":", lw=1)
        ax.text(goal, -0.6, label, fontsize=6, ha="center", color="gray")
    ax.set_title("ours / reference (blue: throughput, >1 is faster; orange: memory, <1 is smaller)", fontsize=8)
    ax.tick_params(axis="y", labelsize=7)
    ax.invert_yaxis()


def _plot_compose(ax, rows: list[Row], jobs: list[dict]) -> None:
    by_strategy: dict[str, list[tuple[int, float]]] = {}
    for r in rows:
        if r.case.startswith("compose/") and r.metric == "kernel_s" and r.ratio is not None:
            _, strategy, n = r.case.split("/")
            by_strategy.setdefault(strategy, []).append((int(n[2:]), r.ratio))
    for strategy, pts in sorted(by_strategy.items()):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=strategy)
    ax.axhline(2.0, color="gray", ls="--", lw=1, label="goal: 2x floor")
    ax.axhline(1.0, color="black", lw=1)
    ax.set(xscale="log", yscale="log", xlabel="modules composed (N)", ylabel="kernel time / memory-bandwidth floor")
    ax.minorticks_off()
    ax.set_xticks(sorted({n for pts in by_strategy.values() for n, _ in pts}),
                  labels=[str(n) for n in sorted({n for pts in by_strategy.values() for n, _ in pts})])
    ax.set_title("composition kernel vs (bytes read + written) / copy bandwidth", fontsize=8)
    ax.legend(fontsize=7)


def _plot_scaling(ax, rows: list[Row], jobs: list[dict], prefix: str, label: str) -> None:
    pts = _sweep(rows, jobs, prefix)
    x = [p[0] for p in pts]
    ax.plot(x, [p[1] for p in pts], marker="o", label="ours")
    if all(p[2] is not None for p in pts):
        ax.plot(x, [p[2] for p in pts], marker="s", label="reference")
    # What the step would take if time were proportional to model FLOPs, anchored at ours' smallest point.
    ax.plot(x, [pts[0][1] * p[3] / pts[0][3] for p in pts], ls="--", color="gray", label="ours, time ∝ FLOPs")
    ax.set(xscale="log", yscale="log", xlabel=label, ylabel="training step (s)")
    ax.minorticks_off()
    ax.set_xticks(x, labels=[str(v) for v in x])
    ax.set_title(f"LoRA training step vs {label}", fontsize=8)
    ax.legend(fontsize=7)


def plot(rows: list[Row], jobs: list[dict], path: str) -> None:
    """One figure, a panel per kind of result present: ratios, composition vs floor, scaling sweeps."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    panels = []
    if any(r.ratio is not None and not r.case.startswith(("scaling/", "compose/")) for r in rows):
        panels.append(_plot_ratios)
    if any(r.case.startswith("compose/") for r in rows):
        panels.append(_plot_compose)
    for prefix, label in (("scaling/src_len=", "source length"), ("scaling/batch=", "batch size")):
        if _sweep(rows, jobs, prefix):
            panels.append(lambda ax, rows, jobs, p=prefix, lab=label: _plot_scaling(ax, rows, jobs, p, lab))
    cols = min(2, max(1, len(panels)))
    nrows = (len(panels) + cols - 1) // cols or 1
    fig, axes = plt.subplots(nrows, cols, figsize=(7.5 * cols, 5.5 * nrows), squeeze=False)
    for ax, draw in zip(axes.flat, panels):
        draw(ax, rows, jobs)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
        t0 = time.perf_counter()
        try:
            prepare(job, workdir)
            results[job["name"]] = run_job(job, workdir, dict(config.check))
        except BenchmarkError as e:
            log(f"FAILED {job['name']}: {e}")
            details["failures"][job["name"]] = str(e)
            continue
        details["jobs"][job["name"]] = {"spec": job, "results": results[job["name"]], "load_avg_at_start": load,
                                        "wall_s": time.perf_counter() - t0}
        _dump(os.path.join(workdir, "benchmark_details.json"), details)  # a crash later keeps what was measured
    details["machine_after"] = describe_machine()
    done = [j for j in all_jobs if j["name"] in results]
    rows = rows_of(done, results)
    write_outputs(workdir, rows, done, details)
    log(format_table(rows))
    if details["failures"]:
        raise BenchmarkError(f"{len(details['failures'])} job(s) failed: {sorted(details['failures'])}; "
                             f"see {os.path.join(workdir, 'benchmark_details.json')} and {workdir}/logs")
    return [r.to_dict() for r in rows]
