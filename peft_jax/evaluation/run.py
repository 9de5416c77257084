"""One system on one language's articles: decode, write the predictions, score.

  examples = read_examples(xlsum_dir, "swahili", "test", 0)          # 0: the whole split
  row, per_example = run_system(decoder, scoring, "swahili", examples, peft, "predictions/swahili.jsonl")
"""

from __future__ import annotations

import itertools
from typing import Sequence

from peft_jax import data
from peft_jax.evaluation.decoding import Decoder
from peft_jax.evaluation.scoring import Scoring
from peft_jax.evaluation.tables import write_predictions


def read_examples(xlsum_dir: str, language: str, split: str, n: int) -> list[dict]:
    """The first `n` (0: all) XL-Sum examples of one language and split, read no further than needed."""
    return list(itertools.islice(data.xlsum(xlsum_dir, language, split), n or None))


def run_system(decoder: Decoder, scoring: Scoring, language: str, examples: Sequence[dict], peft,
               predictions_path: str) -> tuple[dict, dict]:
    """Decodes `examples` with `peft`, writes them to `predictions_path`; (results row, per-example ROUGE)."""
    predictions, lengths = decoder([ex["text"] for ex in examples], peft)
    write_predictions(predictions_path, examples, predictions, lengths)
    return scoring.score(language, predictions, [ex["summary"] for ex in examples], lengths)
