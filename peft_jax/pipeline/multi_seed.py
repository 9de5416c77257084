"""The experiment over several seeds: every module trained and scored once per seed, one summary.

  workdir/seed_<s>/   a complete one-seed run (its own modules, λ selection, predictions, results)
  workdir/results.csv one row per (language, recipe, seed)
  workdir/summary.csv one row per (language, recipe): mean and std over seeds, pooled bootstrap CI,
                      adjusted p against task_only and a verdict (`peft_jax.evaluation.seeds`)
  workdir/results.md  the summary table, then the per-seed table
  workdir/results_by_language.png   mean ROUGE-L per recipe with the spread over seeds

The first seed trains (or is given) the tokenizer and base; every later seed reuses them, so seeds
differ only where modules differ: initialisation, data order, and what that changes downstream.
"""

from __future__ import annotations

import copy
import os
from typing import Callable

import jax

from peft_jax import evaluation, fileio, metrics
from peft_jax.evaluation import seeds as seed_stats
from peft_jax.pipeline import lambdas

SEED_CSV_COLUMNS = ("language", "recipe", "seed") + tuple(c for c in evaluation.RECIPE_CSV_COLUMNS
                                                           if c not in ("language", "recipe"))


class SeedsError(ValueError):
    """`config.seeds` that cannot name one run per seed."""


def check_seeds(seeds) -> list[int]:
    """The seeds as distinct integers, or a SeedsError naming the problem."""
    if any(isinstance(s, bool) or not isinstance(s, int) for s in seeds) or len(set(seeds)) != len(seeds):
        raise SeedsError(f"seeds must be distinct integers, got {tuple(seeds)}")
    return [int(s) for s in seeds]


def seed_config(config, seed: int, first_workdir: str | None):
    """The one-seed config: `seed`, and after the first seed its tokenizer and base."""
    c = copy.deepcopy(config)
    c.seed, c.seeds = seed, ()
    if first_workdir is not None:
        c.tokenizer.path = config.tokenizer.path or os.path.join(first_workdir, "tokenizer.model")
        c.base.checkpoint = config.base.checkpoint or os.path.join(first_workdir, "base")
    return c


def plan(config, workdir: str) -> list[tuple[int, object, str]]:
    """(seed, one-seed config, workdir/seed_<s>) per seed; later seeds use the first seed's tokenizer and base."""
    seeds = check_seeds(config.seeds)
    # Absolute (or a URL): every seed's modules then name the first seed's tokenizer and base with one spelling,
    # which modules trained together must share.
    workdir = os.fspath(fileio.workdir_path(workdir))
    first = os.path.join(workdir, f"seed_{seeds[0]}")
    return [(s, seed_config(config, s, None if i == 0 else first), os.path.join(workdir, f"seed_{s}"))
            for i, s in enumerate(seeds)]


def run(config, workdir: str, run_seeds: Callable, log=print) -> list[dict]:
    """`run_seeds(plan, log)` over every seed of `config.seeds`; writes the summary; returns the per-seed rows.

    run_seeds gives per seed {"rows": results rows, "sweeps": {recipe: {language: [(λ, score)]}}}; each
    returned row has its `seed`.
    """
    seeds = plan(config, workdir)
    for s, _, sub in seeds:
        log(f"[seed] {s}: {sub}")
    results = run_seeds(seeds, log)
    rows = [{**r, "seed": s} for (s, _, _), result in zip(seeds, results) for r in result["rows"]]
    if jax.process_index() == 0:
        log("\n" + write_report(config, workdir, rows, [r.get("sweeps", {}) for r in results]))
    return rows


SUMMARY_TABLE = (
    ("language", lambda r: r["language"]), ("recipe", lambda r: r["recipe"]), ("seeds", lambda r: str(r["num_seeds"])),
    ("ROUGE-1", lambda r: f"{100 * r['rouge1_mean']:.1f} ± {100 * r['rouge1_std']:.1f}"),
    ("ROUGE-2", lambda r: f"{100 * r['rouge2_mean']:.1f} ± {100 * r['rouge2_std']:.1f}"),
    ("ROUGE-L", lambda r: f"{100 * r['rougeL_mean']:.1f} ± {100 * r['rougeL_std']:.1f} "
                          f"[{100 * r['rougeL_low']:.1f}, {100 * r['rougeL_high']:.1f}]"),
    ("ΔL vs task_only", lambda r: "" if "delta_rougeL" not in r else f"{100 * r['delta_rougeL']:+.1f}"),
    ("p (adj.)", lambda r: "" if "p_value" not in r else f"{r['p_value']:.3f} ({r['p_adjusted']:.3f})"),
    ("verdict", lambda r: r.get("verdict", "")))


def write_report(config, workdir: str, rows: list[dict], sweeps: list[dict] = ()) -> str:
    """results.csv (per seed), summary.csv, results.md and the plots; returns the summary table.

    sweeps: each seed's λ sweeps ({recipe: {language: [(λ, validation ROUGE-L)]}}), shown as mean ± std.
    """
    e = config.eval
    summary = seed_stats.summarize(rows, p_adjust=e.get("p_adjust", "holm"), alpha=e.get("alpha", 0.05),
                                   bootstrap_samples=e.bootstrap_samples, seed=config.seed)
    table = evaluation.markdown_table(SUMMARY_TABLE, summary)
    intro = (f"{len(check_seeds(config.seeds))} seeds ({', '.join(str(s) for s in config.seeds)}). ROUGE F1 ×100: "
             "mean ± standard deviation over seeds, [95% bootstrap interval over the pooled (seed, example) scores]. "
             "ΔL: mean over seeds of recipe − task_only; p: two-sided paired bootstrap over the pooled pairs, "
             f"adjusted across the table ({e.get('p_adjust', 'holm')}). Verdict better / worse: the sign holds on "
             f"every seed and the adjusted p < {e.get('alpha', 0.05)}. Scorer: {metrics.scorer_name(e.tokenization)}. "
             + lambdas.describe(config))
    per_seed = evaluation.markdown_table((("seed", lambda r: str(r["seed"])),) + evaluation.RECIPE_TABLE, rows)
    spread = seed_stats.sweep_spread(list(sweeps))
    evaluation.write_markdown(os.path.join(workdir, "results.md"), "Results over seeds", intro,
                              table + "\n## Per seed\n\n" + per_seed + evaluation.sweep_section(
                                  spread, "mean ± std over seeds; each seed's chosen λ is used on its test split"))
    evaluation.write_csv(os.path.join(workdir, "results.csv"), rows, SEED_CSV_COLUMNS)
    evaluation.write_csv(os.path.join(workdir, "summary.csv"), summary, seed_stats.SUMMARY_CSV_COLUMNS)
    evaluation.bar_plot([{**r, "rougeL": r["rougeL_mean"], "rougeL_low": r["rougeL_mean"] - r["rougeL_std"],
                          "rougeL_high": r["rougeL_mean"] + r["rougeL_std"]} for r in summary],
                        os.path.join(workdir, "results_by_language.png"), series="recipe",
                        title="Zero-shot summarization by recipe (mean ± std over seeds)")
    if spread:
        evaluation.sweep_plot(spread, os.path.join(workdir, "lambda_sweep.png"),
                              "validation ROUGE-L ×100 (mean ± std over seeds)")
    return table
