"""Tokens exactly as XL-Sum's official multilingual ROUGE scorer makes them, quirks included.

The official scorer (``multilingual_rouge_scoring`` in the csebuetnlp/xl-sum repository, a fork
of rouge_score, run as ``RougeScorer(types, lang=<XL-Sum language name>, use_stemmer=True)`` on
texts that have a newline after each sentence) tokenizes a text in these steps, reproduced here:

1. lower-case (``str.lower``);
2. ``basic_tokens``: drop control characters, split at whitespace and at punctuation (every
   non-alphanumeric ASCII character and every Unicode ``P*`` character), dropping it. Other
   symbols (``£``, ``€``, ``©``, emoji) stay inside tokens;
3. the language's segmenter on the tokens joined by single spaces: jieba (Chinese) and PyThaiNLP
   ``newmm`` (Thai) return the spaces between words as tokens too, and these ``" "`` tokens are
   counted like words; MeCab (Japanese) does not; the Burmese segmenter first deletes every
   space, so Latin words become single letters and numbers single digits;
4. without a segmenter (every other language): ``aggressive_tokens`` splits letters from digits
   (native digits too) and makes every other symbol its own token; then each CJK ideograph
   becomes a token;
5. the language's stemmer (``xlsum_stemmers``) on tokens longer than three characters.

``rougeLsum`` splits texts at newlines and tokenizes each sentence with step 2 and the stemmer
only (no segmenter, no step 4): in Chinese, Japanese and Thai a whole sentence is one token.
"""

from __future__ import annotations

import functools
import unicodedata
import warnings
from collections.abc import Callable

import nltk.data
from nltk.tokenize import punkt

from peft_jax.metrics import segmenters, xlsum_stemmers

# XL-Sum language names the scorer maps to another name before choosing segmenter and stemmer.
_NAME_ALIASES = {"chinese_simplified": "chinese", "chinese_traditional": "chinese",
                 "bangla": "bengali", "turkce": "turkish", "mundo": "spanish"}

# Characters the OpenNMT tokenizer reserves for its own marks and replaces on input.
_ONMT_SUBSTITUTES = str.maketrans({"\u2581": "_", "\uffed": "\u25a0", "\uffe8": "\u2502"})
_ONMT_ESCAPED_SPACE = "\uff050020"  # how OpenNMT writes a space it keeps inside a token

# Burmese: the asat (killer), the dot below, the stacking virama, and the signs that depend on
# the character before them (vowel signs, tone marks, medials, the asat).
_MY_ASAT, _MY_DOT_BELOW, _MY_STACK = "\u103a", "\u1037", "\u1039"
_MY_DEPENDENT = frozenset([chr(c) for c in range(0x102B, 0x1033)] + ["\u1036", "\u1037", "\u1038"]
                          + [chr(c) for c in range(0x103B, 0x103F)] + [_MY_ASAT])

# CJK ideograph blocks that the fallback splits into one token per character (BERT's list).
_CJK_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
               (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))


# --------------------------------------------------------------------------- character classes

def _is_punctuation(char: str) -> bool:
    """Every ASCII character that is not a letter, digit or space, and Unicode ``P*``."""
    if char.isascii() and not char.isalnum() and not char.isspace() and char.isprintable():
        return True
    return unicodedata.category(char).startswith("P")


def _is_dropped(char: str) -> bool:
    """NUL, U+FFFD and control/format characters other than tab, newline, carriage return."""
    if char in "\t\n\r":
        return False
    return char in "\x00\ufffd" or unicodedata.category(char).startswith("C")


def _is_space(char: str) -> bool:
    return char in " \t\n\r" or unicodedata.category(char) == "Zs"


def _is_cjk(char: str) -> bool:
    code = ord(char)
    return any(low <= code <= high for low, high in _CJK_RANGES)


# --------------------------------------------------------------------------- the steps

class _BasicTable(dict):
    """``str.translate`` table of step 2, filled per character on first sight.

    Dropped characters map to nothing; whitespace and punctuation to a space, so that
    ``str.split`` then yields exactly the official tokens.
    """

    def __missing__(self, code: int) -> str:
        char = chr(code)
        if _is_dropped(char):
            value = ""
        elif _is_space(char) or _is_punctuation(char):
            value = " "
        else:
            value = char
        self[code] = value
        return value


_BASIC_TABLE = _BasicTable()


def basic_tokens(text: str) -> list[str]:
    """Step 2: whitespace and punctuation split the text; punctuation is dropped."""
    return text.translate(_BASIC_TABLE).split()


@functools.lru_cache(maxsize=None)
def _char_kind(char: str) -> str:
    """Letter, number, combining mark, space or other, for the aggressive split."""
    category = unicodedata.category(char)
    if category[0] in "LNM":
        return category[0]
    return " " if char.isspace() or category[0] == "Z" else "O"


def aggressive_tokens(text: str) -> list[str]:
    """OpenNMT's "aggressive" tokenization: runs of letters, runs of numbers, single others.

    Combining marks stay with the character before them; space separates, except that a mark
    right after a space starts a token holding that space (as ``％0020``).
    """
    tokens: list[str] = []
    word, kind, previous = "", "", ""
    for char in text.translate(_ONMT_SUBSTITUTES):
        char_kind = _char_kind(char)
        if word and (char_kind == "M" or char_kind == kind != "O"):
            word += char
        else:
            if word:
                tokens.append(word)
            word, kind = ("", "") if char_kind == " " else (char, char_kind)
            if char_kind == "M" and previous == " ":
                # A mark right after a space keeps that space, escaped as OpenNMT writes it.
                word = _ONMT_ESCAPED_SPACE + char
        previous = char_kind
    if word:
        tokens.append(word)
    return tokens


def fallback_tokens(text: str) -> list[str]:
    """Step 4: the aggressive split, then one token per CJK ideograph."""
    spaced = "".join(f" {c} " if _is_cjk(c) else c for c in " ".join(aggressive_tokens(text)))
    return spaced.split()


def segment_burmese(text: str) -> list[str]:
    """The Burmese segmenter of XL-Sum's scorer (ACM TALLIP 2019 syllable units), exactly.

    All whitespace is deleted; each dependent sign joins the character before it; units with an
    asat shorter than four characters join the unit before them (unless that one has just
    joined its own predecessor); a lone stacking virama glues its two neighbours.
    """
    text = text.replace("\u200c", " ").replace(_MY_DOT_BELOW + _MY_ASAT, _MY_ASAT + _MY_DOT_BELOW)
    units = list("".join(text.lower().split()))
    for i in range(len(units) - 1, 0, -1):
        if units[i][0] in _MY_DEPENDENT:
            units[i - 1] += units[i]
            units[i] = ""
    units = [u for u in units if u]
    for i in range(1, len(units)):
        if _MY_ASAT in units[i] and len(units[i]) < 4:
            units[i - 1] += units[i]
            units[i] = ""
    joined = " ".join(u for u in units if u)
    return joined.replace(f" {_MY_STACK} ", _MY_STACK).split()


def _segment_chinese(text: str) -> list[str]:
    return list(segmenters.jieba().cut(text))


def _segment_thai(text: str) -> list[str]:
    return segmenters.thai_word_tokenize()(text, engine="newmm")


_SEGMENTERS: dict[str, Callable[[str], list[str]]] = {
    "chinese": _segment_chinese, "thai": _segment_thai, "japanese": segmenters.segment_japanese,
    "burmese": segment_burmese,
}


# --------------------------------------------------------------------------- the tokenizer

def official_name(language_name: str | None) -> str | None:
    """The name the official scorer works with for an XL-Sum language name."""
    return _NAME_ALIASES.get(language_name, language_name) if language_name else None


class XlsumTokenizer:
    """rouge_score ``tokenizer=`` for ROUGE-1/2/L: steps 1-5 of the module docstring.

    ``language_name`` is the XL-Sum name of the language (``peft_jax.languages`` names are
    XL-Sum's); None reproduces the scorer without ``lang``: no segmenter, Porter stemming.
    """

    def __init__(self, language_name: str | None):
        self.name = official_name(language_name)
        self._segment = _SEGMENTERS.get(self.name)
        self._stem = xlsum_stemmers.with_min_length(xlsum_stemmers.stemmer_for(self.name))

    def tokenize(self, text: str) -> list[str]:
        """The tokens the official scorer counts for ROUGE-1, ROUGE-2 and ROUGE-L."""
        text = " ".join(basic_tokens(text.lower().strip()))
        tokens = self._segment(text) if self._segment else []
        if not tokens and text:
            tokens = fallback_tokens(text)
        return [t for t in map(self._stem, tokens) if t]

    def sentence_tokenizer(self) -> SentenceTokenizer:
        """The tokenizer the official scorer applies to each sentence of ROUGE-Lsum."""
        return SentenceTokenizer(self._stem)


class SentenceTokenizer:
    """rouge_score ``tokenizer=`` for ROUGE-Lsum: step 2 and the stemmer, nothing else."""

    def __init__(self, stem: Callable[[str], str]):
        self._stem = stem

    def tokenize(self, text: str) -> list[str]:
        """Stemmed ``basic_tokens`` of one lower-cased sentence."""
        return [t for t in map(self._stem, basic_tokens(text.lower())) if t]


# NLTK data the official scorer reads: (package to download, resource path inside nltk_data).
NLTK_DATA = (("stopwords", "corpora/stopwords"), ("punkt_tab", "tokenizers/punkt_tab/english/"))


def missing_nltk_data() -> tuple[str, ...]:
    """The NLTK data packages of ``NLTK_DATA`` that are not installed.

    Without ``stopwords`` NLTK's stop words are stemmed like other words (ROUGE-1/2/L of Arabic,
    English, French, Portuguese, Russian, Spanish move); without ``punkt_tab`` ROUGE-Lsum splits
    sentences with untrained Punkt. ``python -m nltk.downloader stopwords punkt_tab`` installs both.
    """
    missing = []
    for package, resource in NLTK_DATA:
        try:
            nltk.data.find(resource)
        except LookupError:
            missing.append(package)
    return tuple(missing)


@functools.cache
def _punkt():
    """NLTK's English Punkt model (what ``nltk.sent_tokenize`` uses), or untrained Punkt."""
    try:
        return punkt.PunktTokenizer("english")
    except LookupError:
        warnings.warn("NLTK's English Punkt model is not installed: sentences for rougeLsum are "
                      "split by Punkt without its trained abbreviation list (install it with "
                      "`python -m nltk.downloader punkt_tab`)", stacklevel=2)
        return punkt.PunktSentenceTokenizer()


def newline_sentences(text: str) -> str:
    """``text`` stripped, with a newline after each sentence, as XL-Sum prepares texts.

    Sentences are English Punkt's (``nltk.sent_tokenize``) in every language, so only ``.``,
    ``?`` and ``!`` end one; only ROUGE-Lsum reads the newlines.
    """
    return "\n".join(_punkt().tokenize(text.strip()))
