"""Scores of generated summaries: ROUGE F1 with bootstrap intervals, wrong-language rate, paired tests.

  scoring = Scoring(tokenization="multilingual", identifier="langid", bootstrap_samples=1000, seed=0)
  row, per_example = scoring.score("swahili", predictions, references, lengths)
  row.update(scoring.compare(per_example, baseline_per_example))   # delta_rougeL, two-sided p_value
  adjust_table(rows, "holm")                                        # p_adjusted across the table

A results row holds: language, num_examples, rouge1/2/L with _low/_high (95% percentile bootstrap),
rougeLsum, wrong_language_rate, mean_tokens. Callers add what names the system (system, recipe, lambda).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

from peft_jax import metrics

# The ROUGE types reported with a bootstrap interval.
INTERVAL_KEYS = ("rouge1", "rouge2", "rougeL")


@dataclasses.dataclass(frozen=True)
class Scoring:
    """How summaries are scored; every number it gives depends only on these settings and the texts."""

    # xlsum (XL-Sum's official scorer, quirks included) | multilingual (a clean variant) | sentencepiece |
    # default; `metrics.rouge.scorer_name` says which in every table.
    tokenization: str = "multilingual"
    spm_path: str | None = None  # SentencePiece model of tokenization='sentencepiece'
    # Wrong-language rate: 'langid', a callable text -> language code, or None (script check only).
    identifier: str | Callable[[str], str] | None = "langid"
    bootstrap_samples: int = 1000
    seed: int = 0  # bootstrap seed

    def rouge(self, predictions: Sequence[str], references: Sequence[str], language: str,
              per_example: bool = False) -> dict:
        """`metrics.rouge` with these settings."""
        return metrics.rouge(predictions, references, lang=language, tokenization=self.tokenization,
                             spm_path=self.spm_path, per_example=per_example)

    def score(self, language: str, predictions: Sequence[str], references: Sequence[str],
              lengths: Sequence[int]) -> tuple[dict, dict]:
        """(results row, per-example ROUGE F1 by type) of one system on one language."""
        r = self.rouge(predictions, references, language, per_example=True)
        row = {"language": language, "num_examples": len(predictions), "rougeLsum": r["rougeLsum"],
               "wrong_language_rate": metrics.wrong_language_rate(predictions, language, identifier=self.identifier),
               "mean_tokens": float(np.mean(lengths))}
        for key in INTERVAL_KEYS:
            row[key], row[key + "_low"], row[key + "_high"] = metrics.bootstrap_ci(
                r["per_example"][key], num_samples=self.bootstrap_samples, seed=self.seed)
        return row, r["per_example"]

    def compare(self, per_example: dict, baseline: dict, key: str = "rougeL") -> dict:
        """Paired bootstrap of a system against a baseline on the same examples: delta_<key>, two-sided p_value."""
        t = metrics.paired_bootstrap(per_example[key], baseline[key], num_samples=self.bootstrap_samples,
                                     seed=self.seed)
        return {"delta_" + key: t["delta"], "p_value": t["p_value"]}


def adjust_table(rows: Sequence[dict], method: str = "holm") -> None:
    """Adds `p_adjusted` (and `p_adjust`, the method) to every row with a `p_value`: the table is one family."""
    compared = [r for r in rows if r.get("p_value") is not None]
    for r, p in zip(compared, metrics.adjust_p_values([r["p_value"] for r in compared], method)):
        r["p_adjusted"], r["p_adjust"] = p, method
