"""benchmark.png: one panel per kind of result present (ratios, composition vs its floor, scaling sweeps)."""

from __future__ import annotations

from peft_jax.bench import cases
from peft_jax.bench.tables import Row


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


def figure(rows: list[Row], jobs: list[dict]):
    """One `matplotlib.figure.Figure`, a panel per kind of result present: ratios, composition vs floor,
    scaling sweeps. Drawn without pyplot, so the caller's matplotlib backend is left alone."""
    # Imported here, not at the top: the workers import this package, and matplotlib would count in
    # the memory they measure.
    from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel

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
    fig = Figure(figsize=(7.5 * cols, 5.5 * nrows))
    axes = fig.subplots(nrows, cols, squeeze=False)
    for ax, draw in zip(axes.flat, panels):
        draw(ax, rows, jobs)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def plot(rows: list[Row], jobs: list[dict], path: str) -> None:
    """Saves `figure(rows, jobs)` to path (benchmark.png)."""
    figure(rows, jobs).savefig(path, dpi=110)
