"""Results files: one writer per format (CSV, Markdown, JSON-lines predictions) and the table layouts.

Rows are the dicts of `scoring.Scoring.score` plus the caller's labels. Two layouts exist:
  system table   one system over several languages (launch/evaluate.py): ROUGE ×100 to 2 decimals,
                 ROUGE-Lsum, generated tokens
  recipe table   several composition recipes per language (the pipeline): ROUGE ×100 to 1 decimal,
                 the chosen λ, the paired-bootstrap ΔL against task_only
and the λ-sweep table of the pipeline (validation ROUGE-L per λ and language).
Every file is written whole (`fileio.write_text`), to a local path or a `gs://` URL.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Callable, Sequence

from peft_jax.fileio import write_text

# A Markdown column: its header and the cell text of a row.
Column = tuple[str, Callable[[dict], str]]

SYSTEM_CSV_COLUMNS = ("language", "system", "num_examples", "rouge1", "rouge1_low", "rouge1_high", "rouge2",
                      "rouge2_low", "rouge2_high", "rougeL", "rougeL_low", "rougeL_high", "rougeLsum",
                      "wrong_language_rate", "mean_tokens")
RECIPE_CSV_COLUMNS = ("language", "recipe", "rouge1", "rouge1_low", "rouge1_high", "rouge2", "rouge2_low",
                      "rouge2_high", "rougeL", "rougeL_low", "rougeL_high", "rougeLsum", "wrong_language_rate",
                      "lambda", "lambda_protocol", "delta_rougeL", "p_value", "p_adjusted", "p_adjust",
                      "num_examples", "note")


# ------------------------------------------------------------------------------ writers
def csv_text(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """`columns` of every row at full precision; a missing or None value is an empty cell."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k, "") for k in columns})
    return out.getvalue()


def write_csv(path: str, rows: Sequence[dict], columns: Sequence[str]) -> None:
    write_text(path, csv_text(rows, columns))


def markdown_table(columns: Sequence[Column], rows: Sequence[dict]) -> str:
    """A header line, a delimiter line and one line per row."""
    lines = [_markdown_line(header for header, _ in columns), "|---" * len(columns) + "|"]
    lines.extend(_markdown_line(cell(r) for _, cell in columns) for r in rows)
    return "\n".join(lines) + "\n"


def _markdown_line(cells) -> str:
    return "| " + " | ".join(cells) + " |"


def write_markdown(path: str, title: str, intro: str, body: str) -> None:
    """A document: `# title`, an introductory paragraph, then `body` (tables, sections)."""
    write_text(path, f"# {title}\n\n{intro}\n\n{body}")


def write_predictions(path: str, examples: Sequence[dict], predictions: Sequence[str],
                      lengths: Sequence[int]) -> None:
    """JSON lines: id, prediction, reference (the gold summary), num_tokens."""
    write_text(path, "".join(json.dumps({"id": ex["id"], "prediction": pred, "reference": ex["summary"],
                                         "num_tokens": n}, ensure_ascii=False) + "\n"
                             for ex, pred, n in zip(examples, predictions, lengths)))


# ------------------------------------------------------------------------------ layouts
def _interval(key: str, digits: int) -> Callable[[dict], str]:
    """`mean [low, high]` of a ROUGE key, ×100."""
    def cell(r: dict) -> str:
        mean, low, high = (f"{100 * r[key + suffix]:.{digits}f}" for suffix in ("", "_low", "_high"))
        return f"{mean} [{low}, {high}]"
    return cell


def _wrong_language(r: dict) -> str:
    return f"{100 * r['wrong_language_rate']:.0f}%"


def _optional(key: str, fmt: Callable[[dict], str]) -> Callable[[dict], str]:
    """`fmt(row)` where the row has a value for `key`, else an empty cell."""
    return lambda r: "" if r.get(key) in (None, "") else fmt(r)


def _paired_delta(r: dict) -> str:
    """ΔL ×100 with its two-sided p and, when the table was adjusted, the adjusted p."""
    adjusted = f"; adj. {r['p_adjusted']:.3f}" if r.get("p_adjusted") is not None else ""
    return f"{100 * r['delta_rougeL']:+.1f} ({r['p_value']:.3f}{adjusted})"


SYSTEM_TABLE: tuple[Column, ...] = (
    ("language", lambda r: r["language"]), ("system", lambda r: r["system"]),
    ("n", lambda r: str(r["num_examples"])),
    ("ROUGE-1", _interval("rouge1", 2)), ("ROUGE-2", _interval("rouge2", 2)), ("ROUGE-L", _interval("rougeL", 2)),
    ("ROUGE-Lsum", lambda r: f"{100 * r['rougeLsum']:.2f}"), ("wrong lang.", _wrong_language),
    ("tokens", lambda r: f"{r['mean_tokens']:.1f}"))

# A recipe that could not run for a language (e.g. no related labeled language) has a `note` instead of scores.
RECIPE_TABLE: tuple[Column, ...] = (
    ("language", lambda r: r["language"]), ("recipe", lambda r: r["recipe"]),
    ("λ", _optional("lambda", lambda r: f"{r['lambda']:g}")),
    ("ROUGE-1", _optional("rouge1", _interval("rouge1", 1))), ("ROUGE-2", _optional("rouge2", _interval("rouge2", 1))),
    ("ROUGE-L", _optional("rougeL", _interval("rougeL", 1))),
    ("ΔL vs task_only (p; adj. p)", _optional("delta_rougeL", _paired_delta)),
    ("wrong lang.", _optional("wrong_language_rate", _wrong_language)), ("note", lambda r: r.get("note") or ""))


def sweep_section(by_recipe: dict[str, dict[str, Sequence[tuple]]],
                  note: str = "the chosen λ is used on test") -> str:
    """A Markdown section of λ-sweep tables, one per recipe ('' without sweeps); `note` ends its heading."""
    if not by_recipe:
        return ""
    return (f"\n## λ sweeps (validation ROUGE-L ×100; {note})\n\n"
            + "".join(f"\n{recipe}\n\n" + sweep_table(per_lang) for recipe, per_lang in by_recipe.items()))


def sweep_table(per_language: dict[str, Sequence[tuple]]) -> str:
    """Languages × λ: validation score ×100, or mean ± std for (λ, mean, std) points (first language's grid)."""
    lambdas = [p[0] for p in next(iter(per_language.values()))]
    cell = lambda p: f"{100 * p[1]:.1f}" + (f" ± {100 * p[2]:.1f}" if len(p) == 3 else "")
    columns = [("language", lambda r: r["language"])]
    columns += [(f"λ={lam:g}", lambda r, i=i: cell(r["points"][i])) for i, lam in enumerate(lambdas)]
    rows = [{"language": lang, "points": list(points)} for lang, points in sorted(per_language.items())]
    return markdown_table(columns, rows)
