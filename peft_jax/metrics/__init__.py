"""Scoring of generated summaries: ROUGE (XL-Sum's official protocol and variants), wrong-language rate,
bootstrap intervals and tests, multiple-testing adjustment."""

from peft_jax.metrics.bootstrap import bootstrap_ci, paired_bootstrap
from peft_jax.metrics.language_id import in_language, script_of, wrong_language_rate
from peft_jax.metrics.multiple_testing import adjust_p_values
from peft_jax.metrics.rouge import (ROUGE_TYPES, MultilingualTokenizer, RougeInputError,
                                    SentencePieceTokenizer, rouge, scorer_name)

__all__ = [
    "ROUGE_TYPES", "MultilingualTokenizer", "RougeInputError", "SentencePieceTokenizer",
    "adjust_p_values", "bootstrap_ci", "in_language", "paired_bootstrap", "rouge", "scorer_name",
    "script_of", "wrong_language_rate",
]
