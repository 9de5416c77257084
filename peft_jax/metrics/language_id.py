"""Is a generated text in the language we asked for? Script check plus language ID.

Zero-shot cross-lingual summarizers often answer in the wrong language (mostly
English, the task module's language). ``wrong_language_rate`` measures that:
a text is in language L when

1. at least ``MIN_SCRIPT_SHARE`` of its letters are in L's script (ISO 15924,
   from ``peft_jax.languages``; ``Jpan`` accepts Han + kana, ``Kore`` Hangul +
   Han, ``Hans``/``Hant`` Han), and
2. the identifier agrees: by default ``langid`` (Lui & Baldwin 2012), consulted
   only when it knows L (its 97 ISO 639-1 codes); its top-1 answer must be L or
   a variety langid cannot tell apart from L (``CONFUSABLE``). A callable
   ``text -> code`` can replace it (e.g. for made-up languages); ``None``
   keeps only the script check.

Texts without a single letter count as wrong-language (an empty summary is not a
summary in L).
"""

from __future__ import annotations

import collections
import functools
import unicodedata
from collections.abc import Callable, Sequence

from peft_jax import extras, languages

MIN_SCRIPT_SHARE = 0.5

# Pluricentric varieties that langid's models do not separate reliably.
CONFUSABLE = (frozenset({"bs", "hr", "sr"}), frozenset({"id", "ms"}),
              frozenset({"no", "nb", "nn"}))

# First words of Unicode character names -> ISO 15924 code.
_NAME_TO_SCRIPT = {
    "LATIN": "Latn", "CYRILLIC": "Cyrl", "GREEK": "Grek", "ARMENIAN": "Armn", "GEORGIAN": "Geor",
    "HEBREW": "Hebr", "ARABIC": "Arab", "SYRIAC": "Syrc", "THAANA": "Thaa", "NKO": "Nkoo",
    "ETHIOPIC": "Ethi", "DEVANAGARI": "Deva", "BENGALI": "Beng", "GURMUKHI": "Guru",
    "GUJARATI": "Gujr", "ORIYA": "Orya", "TAMIL": "Taml", "TELUGU": "Telu", "KANNADA": "Knda",
    "MALAYALAM": "Mlym", "SINHALA": "Sinh", "THAI": "Thai", "LAO": "Laoo", "TIBETAN": "Tibt",
    "MYANMAR": "Mymr", "KHMER": "Khmr", "MONGOLIAN": "Mong", "HANGUL": "Hang",
    "HIRAGANA": "Hira", "KATAKANA": "Kana", "CJK": "Hani", "TIFINAGH": "Tfng",
    "CHEROKEE": "Cher", "CANADIAN": "Cans", "OL": "Olck", "JAVANESE": "Java",
}

# Scripts whose letters count as "in the expected script" for composite codes.
_SCRIPT_MEMBERS = {"Jpan": {"Hani", "Hira", "Kana"}, "Kore": {"Hang", "Hani"},
                   "Hans": {"Hani"}, "Hant": {"Hani"}}


def _letter_script(char: str) -> str:
    """ISO 15924 code of one letter from its Unicode name ("Zzzz" when unknown)."""
    words = unicodedata.name(char, "").split()
    if words and words[0] in ("HALFWIDTH", "FULLWIDTH"):
        words = words[1:]
    return _NAME_TO_SCRIPT.get(words[0], "Zzzz") if words else "Zzzz"


def script_counts(text: str) -> collections.Counter:
    """Number of letters (Unicode category L*) of ``text`` per ISO 15924 script."""
    return collections.Counter(_letter_script(c) for c in text if unicodedata.category(c)[0] == "L")


def script_of(text: str) -> str:
    """Dominant ISO 15924 script of the letters of ``text``.

    Han mixed with kana is reported as ``Jpan`` and Hangul (with or without
    Han) as ``Kore``; text without letters is ``Zyyy`` (ISO 15924 "Common").
    """
    counts = script_counts(text)
    if not counts:
        return "Zyyy"
    dominant = counts.most_common(1)[0][0]
    if dominant in ("Hani", "Hira", "Kana") and (counts["Hira"] or counts["Kana"]):
        return "Jpan"
    if dominant in ("Hang", "Hani") and counts["Hang"]:
        return "Kore"
    return dominant


def script_share(text: str, script: str) -> float:
    """Share of the letters of ``text`` written in ``script`` (0.0 without letters)."""
    counts = script_counts(text)
    total = sum(counts.values())
    members = _SCRIPT_MEMBERS.get(script, {script})
    return sum(counts[s] for s in members) / total if total else 0.0


@functools.cache
def _langid_identifier():
    """A private langid identifier (langid's module-level one is global state)."""
    langid = extras.require("langid.langid", "the langid language identifier")
    return langid.LanguageIdentifier.from_modelstring(langid.model, norm_probs=False)


def langid_languages() -> frozenset[str]:
    """The ISO 639-1 codes langid can answer."""
    return frozenset(_langid_identifier().nb_classes)


def _langid_agrees(text: str, target: languages.Language) -> bool | None:
    """langid's verdict on ``text`` being ``target``, or None when langid lacks it."""
    if target.iso1 is None or target.iso1 not in langid_languages():
        return None
    predicted, _ = _langid_identifier().classify(text)
    if predicted == target.iso1:
        return True
    return any(predicted in group and target.iso1 in group for group in CONFUSABLE)


def _callable_agrees(code: str, target: languages.Language) -> bool:
    """Whether a code returned by a user identifier names ``target``."""
    if not isinstance(code, str):
        raise TypeError(f"identifier must return a language code string, got {type(code).__name__}")
    try:
        return languages.resolve(code) == target or code.strip().lower() in {
            c.lower() for c in target.codes()}
    except languages.UnknownLanguageError:
        return False


def in_language(text: str, lang: str | languages.Language,
                identifier: str | Callable[[str], str] | None = "langid") -> bool:
    """Whether ``text`` passes the script check and the identifier for ``lang``."""
    target = languages.resolve(lang)
    if script_share(text, target.script) < MIN_SCRIPT_SHARE:
        return False
    if identifier is None:
        return True
    if callable(identifier):
        return _callable_agrees(identifier(text), target)
    if identifier != "langid":
        raise ValueError(f"identifier must be 'langid', None or a callable, got {identifier!r}")
    verdict = _langid_agrees(text, target)
    return True if verdict is None else verdict


def wrong_language_rate(texts: Sequence[str], lang: str | languages.Language,
                        identifier: str | Callable[[str], str] | None = "langid") -> float:
    """Share of ``texts`` that are not in ``lang`` (see the module docstring).

    Raises:
      ValueError: ``texts`` is empty or a bare string, or ``identifier`` is unknown.
      UnknownLanguageError: ``lang`` is not a known code.
    """
    if isinstance(texts, str):
        raise ValueError("texts must be a sequence of strings, not a single string")
    if len(texts) == 0:
        raise ValueError("texts is empty: no rate to compute")
    wrong = sum(not in_language(t, lang, identifier) for t in texts)
    return wrong / len(texts)
