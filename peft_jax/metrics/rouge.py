"""ROUGE for many languages: XL-Sum's official scorer, a clean multilingual one, English, SentencePiece.

Stock ``rouge_score`` keeps only ``[a-z0-9]`` and so scores Bengali, Hindi or
Chinese as zero. ``rouge`` offers four tokenizations, all scored by
``rouge_score`` itself (its ``tokenizer=`` hook), so n-gram and LCS counting is
the reference implementation in every mode:

* ``"xlsum"``: XL-Sum's official multilingual scorer (Hasan et al. 2021), quirks
  included, for numbers comparable with published XL-Sum results (``xlsum.py``).
* ``"multilingual"``: a clean variant of that protocol (every Unicode punctuation
  and symbol removed, whitespace never a token, the same segmenter for every
  ROUGE type, Snowball stemming where Snowball has the language), see
  ``MultilingualTokenizer`` and docs/multilingual_rouge.md.
* ``"default"``: exactly ``RougeScorer(types, use_stemmer=True)`` (English, Porter).
* ``"sentencepiece"``: ROUGE over the pieces of a SentencePiece model.

``rougeLsum`` splits summaries into sentences at newlines (rouge_score's rule
when ``split_summaries=False``); ``"xlsum"`` first puts a newline after each
sentence as XL-Sum does, the others score the text as given.
"""

from __future__ import annotations

import functools
import itertools
import os
import re
import unicodedata
import warnings
from collections.abc import Callable, Iterator, Sequence

from rouge_score import rouge_scorer, tokenizers

from peft_jax import extras, languages
from peft_jax.metrics import segmenters, xlsum
from peft_jax.metrics.segmenters import segment_japanese
from peft_jax.metrics.xlsum_stemmers import MIN_STEM_LENGTH

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
TOKENIZATIONS = ("xlsum", "multilingual", "sentencepiece", "default")

# What each tokenization is, in words a results table can print under its scores.
SCORER_NAMES = {
    "xlsum": "XL-Sum official multilingual ROUGE (csebuetnlp/xl-sum multilingual_rouge_scoring), reproduced",
    "multilingual": "clean multilingual ROUGE (peft_jax; not XL-Sum's official scorer)",
    "default": "rouge_score English ROUGE (Porter stemming)",
    "sentencepiece": "ROUGE over SentencePiece pieces",
}


# Snowball algorithms (PyStemmer) for table languages whose name differs from the algorithm.
_SNOWBALL_ALIASES = {"serbian_cyrillic": "serbian", "serbian_latin": "serbian",
                     "norwegian_bokmal": "norwegian"}

# Scripts written without spaces between words, and the segmenter used for each.
_UNSPACED_SCRIPTS = ("Hani", "Hira", "Kana", "Thai", "Mymr", "Khmr", "Laoo", "Tibt")


class RougeInputError(ValueError):
    """Predictions/references or options that ROUGE cannot score."""


# --------------------------------------------------------------------------- text clean-up

def _clean_char(char: str) -> str:
    """Space for punctuation (P*) and symbols (S*); nothing for invisible format/control
    characters (ZWNJ/ZWJ join word parts in Persian or Sinhala, so they must not split)."""
    if char.isspace():
        return char
    category = unicodedata.category(char)
    if category[0] in "PS":
        return " "
    return "" if category[0] == "C" else char


def normalize_text(text: str) -> str:
    """Lower-cases, turns punctuation and symbols into spaces, drops control characters."""
    return "".join(_clean_char(c) for c in text.lower())


def _char_script(char: str) -> str:
    """Coarse script of one character, only distinguishing the unspaced scripts."""
    name = unicodedata.name(char, "")
    for prefix, script in (("CJK", "Hani"), ("HIRAGANA", "Hira"), ("KATAKANA", "Kana"),
                           ("HALFWIDTH KATAKANA", "Kana"), ("THAI", "Thai"),
                           ("MYANMAR", "Mymr"), ("KHMER", "Khmr"), ("LAO", "Laoo"),
                           ("TIBETAN", "Tibt")):
        if name.startswith(prefix):
            return script
    return "other"


# --------------------------------------------------------------------------- segmenters

# A Burmese syllable starts at a consonant unless the consonant is stacked under
# a virama (U+1039) or is killed by an asat (U+103A) / virama that follows it
# (the "sylbreak" rule of Ye Kyaw Thu for Unicode Burmese). Independent vowels
# and symbols start a syllable too; digit runs and non-Burmese runs stay whole.
_MYANMAR_SYLLABLE_START = re.compile(
    "(?<!\u1039)[\u1000-\u1021](?![\u103a\u1039])"
    "|[\u1023-\u102a\u103f\u104c-\u104f]"
    "|[\u1040-\u1049]+"
    "|[^\u1000-\u109f]+")


def segment_burmese(text: str) -> list[str]:
    """Splits Burmese text into syllables (whitespace separates too)."""
    tokens = []
    for chunk in text.split():
        starts = [m.start() for m in _MYANMAR_SYLLABLE_START.finditer(chunk)]
        if not starts or starts[0] != 0:
            starts = [0] + starts  # leading dependent signs join the first syllable
        tokens.extend(chunk[a:b] for a, b in zip(starts, starts[1:] + [len(chunk)]))
    return tokens


def segment_chinese(text: str) -> list[str]:
    """Chinese words by jieba (its default dictionary and HMM, as XL-Sum uses)."""
    return [t for t in segmenters.jieba().cut(text) if t.strip()]




def segment_thai(text: str) -> list[str]:
    """Thai words by PyThaiNLP's dictionary-based ``newmm`` engine (needs no download)."""
    word_tokenize = segmenters.thai_word_tokenize()
    return [t for t in word_tokenize(text, engine="newmm", keep_whitespace=False) if t.strip()]


def _clusters(text: str) -> list[str]:
    """Characters with their following combining marks: a base plus its M* signs."""
    out: list[str] = []
    for char in text:
        if out and unicodedata.category(char)[0] == "M":
            out[-1] += char
        else:
            out.append(char)
    return out


def _split_run(run: str, script: str) -> list[str]:
    """Segments a run of one unspaced script (the language-agnostic fallback)."""
    if script == "Thai":
        return segment_thai(run)
    if script == "Mymr":
        return segment_burmese(run)
    return _clusters(run)  # Han, kana, Khmer, Lao, Tibetan: one character per token


def _script_runs(chunk: str) -> Iterator[tuple[str, str]]:
    """(coarse script, run) for maximal runs of one script; marks join the run before."""
    scripts: list[str] = []
    for char in chunk:
        is_mark = bool(scripts) and unicodedata.category(char)[0] == "M"
        scripts.append(scripts[-1] if is_mark else _char_script(char))
    pos = 0
    for script, group in itertools.groupby(scripts):
        length = sum(1 for _ in group)
        yield script, chunk[pos:pos + length]
        pos += length


def segment_by_script(text: str) -> list[str]:
    """Whitespace tokens, with runs of unspaced scripts split further.

    Han ideographs become one token each (as the XL-Sum scorer's fallback and
    BERT do), Thai runs go to ``newmm``, Burmese runs to syllables, kana,
    Khmer, Lao and Tibetan to single characters with their combining marks.
    """
    tokens: list[str] = []
    for chunk in text.split():
        for script, run in _script_runs(chunk):
            tokens.extend(_split_run(run, script) if script in _UNSPACED_SCRIPTS else [run])
    return tokens


# Dedicated segmenters, keyed by the ISO 15924 script of the language in the table.
_SEGMENTERS: dict[str, Callable[[str], list[str]]] = {
    "Hans": segment_chinese, "Hant": segment_chinese, "Jpan": segment_japanese,
    "Thai": segment_thai, "Mymr": segment_burmese,
}


# --------------------------------------------------------------------------- stemming

@functools.cache
def snowball_algorithm(language: languages.Language | None) -> str | None:
    """The PyStemmer Snowball algorithm for ``language``, or None when there is none."""
    if language is None:
        return None
    stemmer = extras.require("Stemmer", "multilingual ROUGE stemming")
    name = _SNOWBALL_ALIASES.get(language.name, language.name)
    # "porter" and "dutch_porter" are variants, never a language of the table.
    return name if name in stemmer.algorithms() and "porter" not in name else None


class MultilingualTokenizer:
    """The clean multilingual ROUGE tokenizer (``"multilingual"``), usable as rouge_score's ``tokenizer=``.

    A clean variant of the XL-Sum protocol; ``xlsum.XlsumTokenizer`` is the official one.

    Steps: lower-case; punctuation, symbols and control characters become
    spaces; segmentation (jieba for Chinese, MeCab/UniDic-lite for Japanese,
    PyThaiNLP newmm for Thai, syllables for Burmese, ``segment_by_script``
    for everything else); Snowball stemming (PyStemmer) of tokens longer than
    three characters when Snowball has the language. ``language=None`` is the
    language-agnostic fallback: ``segment_by_script`` and no stemming.
    """

    def __init__(self, language: languages.Language | None):
        self.language = language
        script = language.script if language else None
        self._segment = _SEGMENTERS.get(script, segment_by_script)
        algorithm = snowball_algorithm(language)
        self._stemmer = None
        if algorithm:
            self._stemmer = extras.require("Stemmer", "multilingual ROUGE stemming").Stemmer(algorithm)

    def tokenize(self, text: str) -> list[str]:
        """Tokens of ``text`` after normalization, segmentation and stemming."""
        tokens = self._segment(normalize_text(text))
        if self._stemmer is not None:
            tokens = [self._stemmer.stemWord(t) if len(t) > MIN_STEM_LENGTH else t
                      for t in tokens]
        return [t for t in tokens if t]


class SentencePieceTokenizer:
    """Tokens are the pieces of a SentencePiece model (no lower-casing, no stemming)."""

    def __init__(self, spm_path: str | os.PathLike):
        import sentencepiece  # pylint: disable=import-outside-toplevel
        if not os.path.isfile(spm_path):
            raise FileNotFoundError(f"SentencePiece model not found: {os.fspath(spm_path)!r}")
        self._processor = sentencepiece.SentencePieceProcessor(model_file=os.fspath(spm_path))

    def tokenize(self, text: str) -> list[str]:
        """The model's pieces of ``text``."""
        return self._processor.encode(text, out_type=str)


# --------------------------------------------------------------------------- scoring

def scorer_name(tokenization: str) -> str:
    """The scorer behind ``tokenization``, to print with every table of its scores."""
    if tokenization not in SCORER_NAMES:
        raise RougeInputError(f"unknown tokenization {tokenization!r}; expected one of {TOKENIZATIONS}")
    missing = xlsum.missing_nltk_data() if tokenization == "xlsum" else ()
    if missing:
        # Then the scores differ from the official ones (docs/multilingual_rouge.md): say so.
        return f"{SCORER_NAMES[tokenization]}, without NLTK data {' and '.join(missing)}"
    return SCORER_NAMES[tokenization]


@functools.lru_cache(maxsize=32)
def _multilingual_tokenizer(language: languages.Language | None) -> MultilingualTokenizer:
    """One tokenizer per language: segmenters and stemmers are costly to build."""
    return MultilingualTokenizer(language)


@functools.lru_cache(maxsize=32)
def _xlsum_tokenizer(language_name: str | None) -> xlsum.XlsumTokenizer:
    """One XL-Sum tokenizer per language (its stemmer caches stems)."""
    return xlsum.XlsumTokenizer(language_name)


def _check_inputs(predictions, references, tokenization, spm_path) -> None:
    """Raises RougeInputError describing the first problem with the arguments."""
    if isinstance(predictions, str) or isinstance(references, str):
        raise RougeInputError("predictions and references must be sequences of strings, not a string")
    if len(predictions) == 0:
        raise RougeInputError("predictions is empty: nothing to score")
    if len(predictions) != len(references):
        raise RougeInputError(f"predictions and references differ in length: "
                              f"{len(predictions)} predictions vs {len(references)} references")
    for i, (p, r) in enumerate(zip(predictions, references)):
        if not isinstance(p, str) or not isinstance(r, str):
            raise RougeInputError(f"example {i}: expected str prediction and reference, got "
                                  f"{type(p).__name__} and {type(r).__name__}")
    if tokenization not in TOKENIZATIONS:
        raise RougeInputError(f"unknown tokenization {tokenization!r}; expected one of {TOKENIZATIONS}")
    if tokenization == "sentencepiece" and spm_path is None:
        raise RougeInputError("tokenization='sentencepiece' needs spm_path (a SentencePiece .model file)")


def _make_tokenizer(lang, tokenization, spm_path):
    """The rouge_score tokenizer for the chosen mode (None: rouge_score's default)."""
    if tokenization == "default":
        return None
    if tokenization == "sentencepiece":
        return SentencePieceTokenizer(spm_path)
    if tokenization == "xlsum":
        if lang is None:
            warnings.warn("rouge(lang=None, tokenization='xlsum'): the XL-Sum scorer without a "
                          "language (no segmenter, Porter stemming)", stacklevel=3)
            return _xlsum_tokenizer(None)
        return _xlsum_tokenizer(languages.resolve(lang).name)
    if lang is None:
        warnings.warn("rouge(lang=None): language-agnostic fallback tokenization "
                      "(punctuation stripped, script-based segmentation, no stemming)",
                      stacklevel=3)
        return _multilingual_tokenizer(None)
    return _multilingual_tokenizer(languages.resolve(lang))


def _warn_if_default_drops_text(references: Sequence[str]) -> None:
    """Warns when rouge_score's English tokenizer would erase a reference with letters."""
    default = tokenizers.DefaultTokenizer(use_stemmer=False)
    for i, ref in enumerate(references):
        if any(c.isalpha() for c in ref) and not default.tokenize(ref):
            warnings.warn(f"tokenization='default' keeps only [a-z0-9]: reference {i} has no "
                          "such token and scores zero; use tokenization='multilingual'",
                          stacklevel=3)
            return


def _scorers(tokenizer) -> list[rouge_scorer.RougeScorer]:
    """rouge_score scorers that together give every ROUGE type with ``tokenizer``.

    XL-Sum's scorer tokenizes the sentences of ROUGE-Lsum differently from the whole text,
    so that type gets its own scorer. use_stemmer only matters for tokenizer=None
    ("default"); ours stem themselves.
    """
    if isinstance(tokenizer, xlsum.XlsumTokenizer):
        return [rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=tokenizer),
                rouge_scorer.RougeScorer(["rougeLsum"], tokenizer=tokenizer.sentence_tokenizer())]
    return [rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True, tokenizer=tokenizer)]


def rouge(predictions: Sequence[str], references: Sequence[str], lang: str | None = "en",
          tokenization: str = "multilingual", spm_path: str | os.PathLike | None = None,
          per_example: bool = False) -> dict:
    """Corpus ROUGE F1: the mean over examples of rouge_score's per-example F1.

    Args:
      predictions: generated summaries, one string per example.
      references: gold summaries, aligned with ``predictions``.
      lang: language code known to ``peft_jax.languages`` (used by "xlsum" and
        "multilingual"), or None for the language-agnostic fallback (with a warning).
      tokenization: "xlsum" (XL-Sum's official scorer), "multilingual" (its clean
        variant), "sentencepiece" or "default" (rouge_score's English tokenizer with
        Porter stemming); ``scorer_name`` describes each.
      spm_path: SentencePiece model, required for "sentencepiece".
      per_example: also return ``per_example``: {rouge type: list of F1}.

    Returns:
      {"rouge1", "rouge2", "rougeL", "rougeLsum": float in [0, 1]}, plus
      "per_example" when asked. rougeLsum splits sentences at newlines ("xlsum"
      first ends every sentence with one).

    Raises:
      RougeInputError: empty input, length mismatch, unknown tokenization, missing spm_path.
      UnknownLanguageError: ``lang`` is not a known code.
      FileNotFoundError: ``spm_path`` does not exist.
    """
    _check_inputs(predictions, references, tokenization, spm_path)
    tokenizer = _make_tokenizer(lang, tokenization, spm_path)
    if tokenization == "default":
        _warn_if_default_drops_text(references)
    scorers = _scorers(tokenizer)
    # XL-Sum strips texts and ends each sentence with a newline before scoring.
    prepare = xlsum.newline_sentences if tokenization == "xlsum" else (lambda text: text)
    scores = {t: [] for t in ROUGE_TYPES}
    for prediction, reference in zip(predictions, references):
        target, prediction = prepare(reference), prepare(prediction)
        for scorer in scorers:
            for t, score in scorer.score(target=target, prediction=prediction).items():
                scores[t].append(score.fmeasure)
    out: dict = {t: sum(v) / len(v) for t, v in scores.items()}
    if per_example:
        out["per_example"] = scores
    return out
