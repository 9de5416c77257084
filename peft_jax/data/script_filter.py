"""Is a text written in a language's script? Letter shares by Unicode script, and simplified vs traditional Chinese.

A language module must read its own script: mC4 ``sr`` mixes Cyrillic and Latin Serbian, mC4 ``uz`` is
mostly Latin while XL-Sum Uzbek is Cyrillic, and mC4 ``zh`` mixes both Chinese standards. Two tests:

* the *script share*: the fraction of a text's letters (Unicode category L) whose Unicode Script property
  belongs to the language's ISO 15924 script. Hans, Hant, Jpan and Kore are writing systems rather than
  Unicode scripts and count Han (+ kana, + Hangul) letters. A text is in the script when more than half of
  its letters are: news text in any script carries some Latin names and acronyms, so the share is rarely 1;
* the *Han variant*: Han letters alone cannot tell the two Chinese standards apart, so the characters of
  ``resources/han_variants.tsv`` (frequent characters whose simplified and traditional forms differ, none
  valid in both standards) are counted on each side; the side with more occurrences names the standard,
  and a text with as many of one as of the other (often none) is undecided and kept by neither.
"""

from __future__ import annotations

import dataclasses
import functools

import regex

from peft_jax import languages

HAN_VARIANTS_PATH = languages.TABLE_PATH.with_name("han_variants.tsv")
# More than this share of a text's letters must be in the language's script.
MIN_SCRIPT_SHARE = 0.5
# Writing systems of the languages table that are not single Unicode scripts.
_UNICODE_SCRIPTS = {"Hans": ("Han",), "Hant": ("Han",), "Jpan": ("Han", "Hiragana", "Katakana"),
                    "Kore": ("Hangul", "Han")}
_LETTER = regex.compile(r"\p{L}")


@functools.cache
def _script_letters(script: str) -> regex.Pattern:
    """Letters of an ISO 15924 script (regex knows the four-letter codes as Script property aliases)."""
    names = "".join(rf"\p{{sc={name}}}" for name in _UNICODE_SCRIPTS.get(script, (script,)))
    try:
        return regex.compile(rf"(?V1)[\p{{L}}&&[{names}]]")
    except regex.error:
        raise ValueError(f"unknown ISO 15924 script code {script!r}") from None


def script_share(text: str, script: str) -> float:
    """The fraction of the letters of ``text`` written in ``script`` (0.0 for a text without letters)."""
    letters = len(_LETTER.findall(text))
    return len(_script_letters(script).findall(text)) / letters if letters else 0.0


@functools.cache
def han_variants() -> tuple[frozenset[str], frozenset[str]]:
    """(simplified-only, traditional-only) characters of ``resources/han_variants.tsv``."""
    simplified, traditional = set(), set()
    for line_no, line in enumerate(HAN_VARIANTS_PATH.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        simple, _, forms = line.partition("\t")
        if len(simple) != 1 or not forms.split() or any(len(f) != 1 or f == simple for f in forms.split()):
            raise ValueError(f"{HAN_VARIANTS_PATH}:{line_no}: expected one simplified character, a tab and its "
                             f"different traditional form(s), got {line!r}")
        simplified.add(simple)
        traditional.update(forms.split())
    both = simplified & traditional
    if both:
        raise ValueError(f"{HAN_VARIANTS_PATH}: characters listed as both simplified and traditional: {sorted(both)}")
    return frozenset(simplified), frozenset(traditional)


@functools.cache
def _han_variant_patterns() -> tuple[regex.Pattern, regex.Pattern]:
    """Character classes of the simplified-only and traditional-only forms (counted at C speed on long documents)."""
    return tuple(regex.compile("[" + "".join(map(regex.escape, sorted(chars))) + "]") for chars in han_variants())


def han_variant(text: str) -> str | None:
    """``"Hans"`` or ``"Hant"``: the standard most of the text's distinguishing characters belong to; None if tied."""
    simplified, traditional = _han_variant_patterns()
    n_simplified, n_traditional = len(simplified.findall(text)), len(traditional.findall(text))
    if n_simplified == n_traditional:
        return None
    return "Hans" if n_simplified > n_traditional else "Hant"


@dataclasses.dataclass(frozen=True)
class ScriptFilter:
    """Keeps texts written mostly in ``script``; with ``han_variant``, also in that Chinese standard."""

    script: str
    han_variant: bool = False

    def __post_init__(self):
        _script_letters(self.script)  # an unknown script code fails here, not on the first document
        if self.han_variant and self.script not in ("Hans", "Hant"):
            raise ValueError(f"the Han variant test needs script 'Hans' or 'Hant', got {self.script!r}")

    def keeps(self, text: str) -> bool:
        """Whether ``text`` is in this filter's script (and Chinese standard)."""
        if script_share(text, self.script) <= MIN_SCRIPT_SHARE:
            return False
        return not self.han_variant or han_variant(text) == self.script

    @classmethod
    def for_language(cls, language: str | languages.Language) -> ScriptFilter:
        """The filter of the unlabeled-text table; the languages table's script for a language it does not list."""
        entry = languages.unlabeled_source(language)
        if entry is None or not entry.available:
            return cls(languages.resolve(language).script)
        return cls(entry.script, han_variant=entry.filter == "han_variant")
