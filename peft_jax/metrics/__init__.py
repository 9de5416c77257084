"""Scoring of generated summaries: multilingual ROUGE, wrong-language rate, bootstrap."""

from peft_jax.metrics.bootstrap import bootstrap_ci, paired_bootstrap
from peft_jax.metrics.language_id import in_language, script_of, wrong_language_rate
from peft_jax.metrics.rouge import (ROUGE_TYPES, MultilingualTokenizer, RougeInputError,
                                    SentencePieceTokenizer, rouge)

__all__ = [
    "ROUGE_TYPES", "MultilingualTokenizer", "RougeInputError", "SentencePieceTokenizer",
    "bootstrap_ci", "in_language", "paired_bootstrap", "rouge", "script_of",
    "wrong_language_rate",
]
