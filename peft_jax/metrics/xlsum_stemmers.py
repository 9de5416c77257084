"""The stemmers of XL-Sum's official multilingual ROUGE, applied exactly as it applies them.

Which stemmer a language gets depends only on the XL-Sum language name passed to the scorer:

* NLTK's Snowball stemmers (``nltk.stem.SnowballStemmer``, with ``ignore_stopwords=True`` so
  that NLTK's stop words stay unstemmed) for the languages NLTK has: among XL-Sum's arabic,
  english, french, portuguese, russian, spanish. Arabic is NLTK's own Arabic stemmer.
* three rule-based stemmers: Bengali (Rafi Kamal 2014, ``bengali_rules``), Hindi (the
  Ramanathan & Rao 2003 suffix stripper), Turkish (``turkish_stemmer``, the algorithm of the
  ``TurkishStemmer`` package).
* nothing for every other language, e.g. Nepali, Tamil, Indonesian, Persian, Serbian.
* Porter (NLTK) when no language is given at all.

Tokens of at most ``MIN_STEM_LENGTH`` characters are never stemmed.
"""

from __future__ import annotations

import functools
import re
import warnings
from collections.abc import Callable

from nltk.corpus import stopwords
from nltk.stem import SnowballStemmer

from peft_jax.metrics import bengali_rules, turkish_stemmer

# Tokens of this many characters or fewer are left as they are (XL-Sum's min_char_length).
MIN_STEM_LENGTH = 3

# Hindi suffixes by length class (Ramanathan & Rao 2003); a token loses its longest matching
# class's last L characters when it is longer than L + 1 characters.
HINDI_SUFFIXES = {
    5: ("ाएंगी", "ाएंगे", "ाऊंगी", "ाऊंगा", "ाइयाँ", "ाइयों", "ाइयां"),
    4: ("ाएगी", "ाएगा", "ाओगी", "ाओगे", "एंगी", "ेंगी", "एंगे", "ेंगे", "ूंगी", "ूंगा", "ातीं",
        "नाओं", "नाएं", "ताओं", "ताएं", "ियाँ", "ियों", "ियां"),
    3: ("ाकर", "ाइए", "ाईं", "ाया", "ेगी", "ेगा", "ोगी", "ोगे", "ाने", "ाना", "ाते", "ाती", "ाता",
        "तीं", "ाओं", "ाएं", "ुओं", "ुएं", "ुआं"),
    2: ("कर", "ाओ", "िए", "ाई", "ाए", "ने", "नी", "ना", "ते", "ीं", "ती", "ता", "ाँ", "ां", "ों", "ें"),
    1: ("ो", "े", "ू", "ु", "ी", "ि", "ा"),
}

# Bengali vowel signs that do not count towards the length of what a rule would leave.
_BENGALI_VOWEL_SIGNS = frozenset("\u09be\u09bf\u09c0\u09c7\u09c1\u09c2\u09cb")


def hindi_stem(token: str) -> str:
    """Strips the longest Hindi suffix class that matches (first listed suffix of a class wins)."""
    for length, suffixes in HINDI_SUFFIXES.items():
        if len(token) > length + 1 and token.endswith(suffixes):
            return token[:-length]
    return token


def _parse_bengali_rules(text: str) -> list[list[tuple[str, str | None]]]:
    """Groups of (suffix pattern, replacement or None); whitespace inside a line is ignored."""
    groups: list[list[tuple[str, str | None]]] = []
    current: list[tuple[str, str | None]] | None = None
    for raw in text.splitlines():
        line = re.sub(r"#.*", "", re.sub(r"\s+", "", raw))
        if line == "{":
            current = []
            groups.append(current)
        elif line == "}":
            current = None
        elif line and current is not None:
            suffix, _, replacement = line.partition("->")
            current.append((suffix, replacement or None))
    return groups


class BengaliStemmer:
    """Rafi Kamal's (2014) Bengali stemmer: per group, the first rule whose suffix ends the word.

    A plain suffix is removed when what remains has at least one character that is not a vowel
    sign; ``a -> b`` overwrites the matched suffix with ``b`` (``.`` keeps the word's character)
    and cuts the word after it. A matching rule ends its group even when it changes nothing.
    """

    def __init__(self, rules: str = bengali_rules.RULES):
        # In the rules `.` is any one character, exactly as a regular expression reads it.
        self._groups = [[(re.compile(f"(?:{suffix})\\Z"), len(suffix), replacement)
                         for suffix, replacement in group]
                        for group in _parse_bengali_rules(rules)]

    def __call__(self, word: str) -> str:
        for group in self._groups:
            for pattern, length, replacement in group:
                if not pattern.search(word):
                    continue
                stem = len(word) - length
                if replacement is not None:
                    kept = [w if r == "." else r for w, r in zip(word[stem:], replacement)]
                    word = word[:stem] + "".join(kept)
                elif any(c not in _BENGALI_VOWEL_SIGNS for c in word[:stem]):
                    word = word[:stem]
                break
        return word


class _NltkStemmer:
    """An NLTK Snowball stemmer that leaves NLTK's stop words of the language unstemmed."""

    def __init__(self, language: str):
        self._stemmer = SnowballStemmer(language)
        self._stop_words = nltk_stop_words(language)

    def __call__(self, token: str) -> str:
        return token if token in self._stop_words else self._stemmer.stem(token)


@functools.cache
def nltk_stop_words(language: str) -> frozenset[str]:
    """NLTK's stop-word list of ``language`` (empty, with a warning, when its corpus is missing).

    NLTK's stop-word corpus is data downloaded separately (``python -m nltk.downloader
    stopwords``). Without it the official scorer cannot start; here stop words are then
    stemmed like every other word, which changes a score only where a stop word's stem
    equals another word's stem.
    """
    try:
        return frozenset(stopwords.words(language))
    except (LookupError, OSError):
        warnings.warn(f"NLTK's stop-word corpus is not installed: {language} stop words are "
                      "stemmed too (XL-Sum's scorer leaves them unstemmed); install it with "
                      "`python -m nltk.downloader stopwords`", stacklevel=2)
        return frozenset()


def stemmer_for(xlsum_name: str | None) -> Callable[[str], str] | None:
    """The stemmer XL-Sum's scorer uses for a language name (None: no stemming)."""
    if xlsum_name is None:
        porter = SnowballStemmer("porter")
        return porter.stem
    if xlsum_name == "hindi":
        return hindi_stem
    if xlsum_name == "bengali":
        return BengaliStemmer()
    if xlsum_name == "turkish":
        return turkish_stemmer.TurkishStemmer()
    if xlsum_name in SnowballStemmer.languages:
        return _NltkStemmer(xlsum_name)
    return None


def with_min_length(stem: Callable[[str], str] | None) -> Callable[[str], str]:
    """``stem`` applied only to tokens longer than ``MIN_STEM_LENGTH`` characters, cached."""
    if stem is None:
        return lambda token: token

    @functools.lru_cache(maxsize=200_000)
    def apply(token: str) -> str:
        return stem(token) if len(token) > MIN_STEM_LENGTH else token
    return apply
