"""Results over several seeds: one summary row per (language, recipe), and a verdict that must survive seeds.

Each seed trains every module again (initialisation and data order change) and scores its own test
predictions; `summarize` turns the per-seed rows into:

  rouge1/2/L_mean, _std     mean and sample standard deviation (ddof=1) over seeds
  rougeL_low/_high          95% percentile bootstrap interval of the mean ROUGE-L over the pooled
                            (seed, example) scores
  delta_rougeL              mean over seeds of (recipe − task_only) ROUGE-L
  p_value                   two-sided paired bootstrap against task_only over the pooled
                            (seed, example) pairs
  p_adjusted                p_value adjusted across every comparison of the table (Holm or BH)
  verdict                   better / worse when the difference has the same sign on every seed and
                            p_adjusted < alpha; otherwise "no difference"
"""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import numpy as np

from peft_jax import metrics
from peft_jax.evaluation.scoring import adjust_table

SUMMARY_CSV_COLUMNS = ("language", "recipe", "num_seeds", "num_examples", "rouge1_mean", "rouge1_std",
                       "rouge2_mean", "rouge2_std", "rougeL_mean", "rougeL_std", "rougeL_low", "rougeL_high",
                       "delta_rougeL", "p_value", "p_adjusted", "verdict", "lambda_protocol", "p_adjust")


def _by_cell(rows: Sequence[dict]) -> dict[tuple[str, str], list[dict]]:
    """Scored rows grouped by (language, recipe), each group ordered by seed."""
    cells = defaultdict(list)
    for r in rows:
        if "rougeL" in r:
            cells[(r["language"], r["recipe"])].append(r)
    return {k: sorted(v, key=lambda r: r["seed"]) for k, v in cells.items()}


def _spread(group: list[dict], key: str) -> tuple[float, float]:
    values = np.asarray([r[key] for r in group], np.float64)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def _pooled(group: list[dict]) -> np.ndarray:
    return np.concatenate([np.asarray(r["per_example_rougeL"], np.float64) for r in group])


def verdict(seed_deltas: Sequence[float], p_adjusted: float, alpha: float = 0.05) -> str:
    """better / worse when every seed's delta has one sign and the adjusted p is below alpha."""
    d = np.asarray(seed_deltas, np.float64)
    if p_adjusted < alpha and np.all(d > 0):
        return "better"
    if p_adjusted < alpha and np.all(d < 0):
        return "worse"
    return "no difference"


def _compare(group: list[dict], base: list[dict], samples: int, seed: int) -> dict:
    """Mean delta, two-sided pooled paired-bootstrap p, and the per-seed deltas of a recipe vs task_only."""
    if [r["seed"] for r in group] != [r["seed"] for r in base]:
        raise ValueError(f"{group[0]['language']}/{group[0]['recipe']}: seeds {[r['seed'] for r in group]} "
                         f"differ from task_only's {[r['seed'] for r in base]}")
    test = metrics.paired_bootstrap(_pooled(group), _pooled(base), num_samples=samples, seed=seed)
    seed_deltas = [r["rougeL"] - b["rougeL"] for r, b in zip(group, base)]
    return {"delta_rougeL": float(np.mean(seed_deltas)), "p_value": test["p_value"], "seed_deltas": seed_deltas}


def summarize(rows: Sequence[dict], *, p_adjust: str = "holm", alpha: float = 0.05, bootstrap_samples: int = 1000,
              seed: int = 0) -> list[dict]:
    """One row per (language, recipe) from per-seed rows holding `seed` and `per_example_rougeL`."""
    cells = _by_cell(rows)
    out = []
    for (lang, recipe), group in cells.items():
        row = {"language": lang, "recipe": recipe, "num_seeds": len(group), "num_examples": group[0]["num_examples"],
               "lambda_protocol": group[0].get("lambda_protocol")}
        for key in ("rouge1", "rouge2", "rougeL"):
            row[key + "_mean"], row[key + "_std"] = _spread(group, key)
        _, row["rougeL_low"], row["rougeL_high"] = metrics.bootstrap_ci(_pooled(group), num_samples=bootstrap_samples,
                                                                        seed=seed)
        base = cells.get((lang, "task_only"))
        if base is not None and recipe != "task_only":
            row.update(_compare(group, base, bootstrap_samples, seed))
        out.append(row)
    compared = [r for r in out if "p_value" in r]
    adjust_table(compared, p_adjust)
    for r in compared:
        r["verdict"] = verdict(r.pop("seed_deltas"), r["p_adjusted"], alpha)
    return out


def sweep_spread(per_seed: Sequence[dict]) -> dict[str, dict[str, list[tuple[float, float, float]]]]:
    """{recipe: {language: [(λ, mean, std)]}} over seeds from each seed's {recipe: {language: [(λ, score)]}}.

    A (recipe, language) sweep enters only where every seed has it, on the same λ grid.
    """
    out: dict[str, dict] = {}
    for recipe, per_language in (per_seed[0] if per_seed else {}).items():
        for lang, points in per_language.items():
            runs = [s.get(recipe, {}).get(lang) for s in per_seed]
            if any(r is None or [lam for lam, _ in r] != [lam for lam, _ in points] for r in runs):
                continue
            scores = np.array([[v for _, v in r] for r in runs], np.float64)
            std = scores.std(axis=0, ddof=1) if len(runs) > 1 else np.zeros(scores.shape[1])
            out.setdefault(recipe, {})[lang] = [(lam, float(m), float(s)) for (lam, _), m, s
                                                in zip(points, scores.mean(axis=0), std)]
    return out
