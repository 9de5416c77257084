"""Results plots: ROUGE bars with bootstrap intervals per language, and validation scores against λ.

Figures are drawn without pyplot, so a caller's backend (e.g. a notebook's) is left alone, and saved
without a version stamp, so identical runs write identical files; they are rendered into a buffer and
written whole, to a local path or a `gs://` URL.
"""

from __future__ import annotations

import io
import os
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure

from peft_jax.fileio import write_bytes

_SAVE = dict(dpi=120, metadata={"Software": None})


def save_figure(fig: Figure, path: str) -> None:
    """Writes `fig` to `path` in the format its extension names (png, pdf, svg), locally or remotely."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format=os.path.splitext(os.fspath(path))[1].lstrip(".") or "png", **_SAVE)
    write_bytes(path, buffer.getvalue())


def bar_plot(rows: Sequence[dict], path: str, series: str, title: str, metric: str = "rougeL") -> None:
    """Grouped bars: one group per language, one bar per value of `row[series]`, with bootstrap intervals."""
    langs = list(dict.fromkeys(r["language"] for r in rows))
    names = list(dict.fromkeys(r[series] for r in rows))
    width = 0.8 / max(len(names), 1)
    fig = Figure(figsize=(max(4.0, 0.8 * len(langs) * max(1.0, len(names) / 2) + 2), 4))
    ax = fig.subplots()
    top = 1.0  # zero scores still get a readable axis
    for j, name in enumerate(names):
        by_lang = {r["language"]: r for r in rows if r[series] == name}
        values, err = _bars([by_lang.get(lang) for lang in langs], metric)
        ax.bar(np.arange(len(langs)) + j * width, values, width, yerr=err, capsize=2, label=name)
        top = max(top, 1.15 * float(np.nanmax(values + err[1])))
    ax.set_xticks(np.arange(len(langs)) + 0.4 - width / 2, langs, rotation=45, ha="right")
    ax.set_ylim(0, top)
    ax.set_ylabel(f"{metric} F1 ×100")
    ax.set_title(title)
    if len(names) > 1:
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    save_figure(fig, path)


def _bars(rows: Sequence[dict | None], metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Bar heights ×100 (NaN where a language has no row) and their [below, above] interval extents."""
    values = np.array([100 * r[metric] if r else np.nan for r in rows])
    low = np.array([100 * r[metric + "_low"] if r else np.nan for r in rows])
    high = np.array([100 * r[metric + "_high"] if r else np.nan for r in rows])
    return values, np.nan_to_num(np.stack([values - low, high - values]))


def sweep_plot(sweeps: dict[str, dict[str, Sequence[tuple[float, float]]]], path: str, ylabel: str) -> None:
    """One panel per recipe: validation score against λ, one line per language; chosen λ marked.

    Points are (λ, score) or, over seeds, (λ, mean, std): the band is mean ± std.
    """
    recipes = list(sweeps)
    fig = Figure(figsize=(4.2 * max(1, len(recipes)), 3.4))
    axes = fig.subplots(1, max(1, len(recipes)), squeeze=False)
    for ax, recipe in zip(axes[0], recipes):
        for lang, points in sorted(sweeps[recipe].items()):
            xs, ys = [p[0] for p in points], [100 * p[1] for p in points]
            line, = ax.plot(xs, ys, marker="o", label=lang)
            if len(points[0]) == 3:
                spread = [100 * p[2] for p in points]
                ax.fill_between(xs, [y - e for y, e in zip(ys, spread)], [y + e for y, e in zip(ys, spread)],
                                color=line.get_color(), alpha=0.2, linewidth=0)
            best = max(points, key=lambda p: p[1])
            ax.plot([best[0]], [100 * best[1]], marker="*", markersize=12, color=line.get_color())
        ax.set_title(recipe)
        ax.set_xlabel("λ")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
