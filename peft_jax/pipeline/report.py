"""Results tables (Markdown, CSV) and plots (per-language bars, λ sweeps) of an experiment."""

from __future__ import annotations

import csv
import io
import os
from typing import Sequence

COLUMNS = ("language", "recipe", "rouge1", "rouge1_low", "rouge1_high", "rouge2", "rouge2_low", "rouge2_high",
           "rougeL", "rougeL_low", "rougeL_high", "rougeLsum", "wrong_language_rate", "lambda", "delta_rougeL",
           "p_value", "num_examples")


def _fmt(value, key: str) -> str:
    if value is None or value == "":
        return ""
    if key in ("language", "recipe"):
        return str(value)
    if key == "num_examples":
        return str(int(value))
    if key.startswith("rouge") or key == "delta_rougeL":
        return f"{100 * value:.2f}"
    return f"{value:.3g}"


def to_csv(rows: Sequence[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k, "") for k in COLUMNS})
    return out.getvalue()


def to_markdown(rows: Sequence[dict]) -> str:
    """Languages × recipes: ROUGE ×100 with 95% bootstrap intervals, wrong-language rate, Δ vs task_only."""
    head = ("| language | recipe | λ | ROUGE-1 | ROUGE-2 | ROUGE-L | ΔL vs task_only (p) | wrong lang. |\n"
            "|---|---|---|---|---|---|---|---|\n")
    lines = []
    for r in rows:
        ci = lambda k: f"{100 * r[k]:.1f} [{100 * r[k + '_low']:.1f}, {100 * r[k + '_high']:.1f}]"
        delta = "" if r.get("delta_rougeL") in (None, "") else f"{100 * r['delta_rougeL']:+.1f} ({r['p_value']:.3f})"
        lam = "" if r.get("lambda") in (None, "") else f"{r['lambda']:g}"
        lines.append(f"| {r['language']} | {r['recipe']} | {lam} | {ci('rouge1')} | {ci('rouge2')} | {ci('rougeL')} "
                     f"| {delta} | {100 * r['wrong_language_rate']:.0f}% |")
    return head + "\n".join(lines) + "\n"


def bar_plot(rows: Sequence[dict], path: str, metric: str = "rougeL") -> None:
    """Grouped bars: one group per language, one bar per recipe, with bootstrap intervals."""
    import numpy as np
    from matplotlib.figure import Figure  # no pyplot: leaves the caller's backend (e.g. a notebook's) alone

    langs = sorted({r["language"] for r in rows})
    recipes = list(dict.fromkeys(r["recipe"] for r in rows))
    width = 0.8 / max(len(recipes), 1)
    fig = Figure(figsize=(max(6, 1.6 * len(langs) * max(1, len(recipes) / 4)), 4))
    ax = fig.subplots()
    for j, recipe in enumerate(recipes):
        vals, errs = [], [[], []]
        for lang in langs:
            r = next((r for r in rows if r["language"] == lang and r["recipe"] == recipe), None)
            v = 100 * r[metric] if r else np.nan
            vals.append(v)
            errs[0].append(v - 100 * r[metric + "_low"] if r and metric + "_low" in r else 0)
            errs[1].append(100 * r[metric + "_high"] - v if r and metric + "_high" in r else 0)
        ax.bar(np.arange(len(langs)) + j * width, vals, width, yerr=errs, capsize=2, label=recipe)
    ax.set_xticks(np.arange(len(langs)) + 0.4 - width / 2, langs)
    ax.set_ylabel(f"{metric} F1 ×100")
    ax.set_title("Zero-shot summarization by recipe (95% bootstrap CI)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def sweep_plot(sweeps: dict[str, dict[str, Sequence[tuple[float, float]]]], path: str, ylabel: str) -> None:
    """One panel per recipe: validation score against λ, one line per language; chosen λ marked."""
    from matplotlib.figure import Figure

    recipes = list(sweeps)
    fig = Figure(figsize=(4.2 * max(1, len(recipes)), 3.4))
    axes = fig.subplots(1, max(1, len(recipes)), squeeze=False)
    for ax, recipe in zip(axes[0], recipes):
        for lang, points in sorted(sweeps[recipe].items()):
            xs, ys = zip(*points)
            line, = ax.plot(xs, [100 * y for y in ys], marker="o", label=lang)
            best = max(points, key=lambda p: p[1])
            ax.plot([best[0]], [100 * best[1]], marker="*", markersize=12, color=line.get_color())
        ax.set_title(recipe)
        ax.set_xlabel("λ")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def write_results(workdir: str, rows: Sequence[dict]) -> tuple[str, str]:
    """Writes results.md and results.csv; returns the Markdown."""
    md = to_markdown(rows)
    with open(os.path.join(workdir, "results.md"), "w", encoding="utf-8") as f:
        f.write("# Results\n\nROUGE F1 ×100 with 95% bootstrap intervals; ΔL: paired bootstrap against task_only.\n\n")
        f.write(md)
    with open(os.path.join(workdir, "results.csv"), "w", encoding="utf-8") as f:
        f.write(to_csv(rows))
    return md, to_csv(rows)
