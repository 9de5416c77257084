"""Keeping XL-Sum's evaluation data out of unlabeled text: BBC pages and sentences of validation/test articles.

mC4 is Common Crawl, and XL-Sum is BBC articles: a language module trained on mC4 can have read the very
articles (and summaries) it is evaluated on. Two tests drop such records:

* **URL**: the record's URL is on a BBC domain (``bbc.com``, ``bbc.co.uk`` or any subdomain of them);
* **overlap**: one of the record's sentences is a sentence of an XL-Sum validation or test article or
  summary. Sentences are compared after normalisation: Unicode NFKC, case folding, every run of
  whitespace as one space. They are cut after sentence-final punctuation of the XL-Sum scripts and at
  line breaks; text and reference are cut by the same rule, so a wrong cut (an abbreviation) shortens
  both sides alike. Sentences shorter than ``min_chars`` normalised characters are ignored: short ones
  ("Share this with Facebook", datelines) recur across unrelated pages and would drop innocent records.
  Sentences are kept as 64-bit BLAKE2b hashes, so the reference of a whole language fits in memory.
"""

from __future__ import annotations

import hashlib
import os
import re
import unicodedata
import urllib.parse
from collections.abc import Iterable, Sequence

from peft_jax import languages
from peft_jax.data.sources import xlsum

BBC_DOMAINS = ("bbc.com", "bbc.co.uk")
# Normalised characters below which a sentence is not compared (about five English words).
MIN_SENTENCE_CHARS = 30
# XL-Sum's evaluation splits: what unlabeled text must not contain.
EVAL_SPLITS = ("validation", "test")
# A sentence ends after . ! ? … and their CJK, Devanagari (danda), Arabic/Urdu, Ethiopic and Myanmar forms.
# Latin-style marks need a following space ("3.5", "bbc.com" are not cut); the others cut where they stand.
_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+|(?<=[。！？।॥۔؟።፧။])\s*|[\r\n]+")


def normalize(sentence: str) -> str:
    """NFKC, case-folded, whitespace runs as one space, stripped."""
    return " ".join(unicodedata.normalize("NFKC", sentence).casefold().split())


def sentences(text: str) -> list[str]:
    """The normalised sentences of ``text`` (empty ones dropped)."""
    return [s for s in (normalize(part) for part in _SENTENCE_END.split(text)) if s]


def _key(sentence: str) -> bytes:
    return hashlib.blake2b(sentence.encode("utf-8"), digest_size=8).digest()


def sentence_keys(text: str, min_chars: int = MIN_SENTENCE_CHARS) -> set[bytes]:
    """Hashes of the normalised sentences of ``text`` with at least ``min_chars`` characters."""
    return {_key(s) for s in sentences(text) if len(s) >= min_chars}


def is_bbc_url(url: str | None, domains: Sequence[str] = BBC_DOMAINS) -> bool:
    """Whether ``url``'s host is one of ``domains`` or a subdomain of one (``www.bbc.co.uk``, not ``notbbc.com``)."""
    if not url:
        return False
    host = urllib.parse.urlsplit(url if "//" in url else "//" + url).hostname or ""
    host = host.rstrip(".").lower()
    return any(host == d or host.endswith("." + d) for d in domains)


class Decontaminator:
    """The two tests against one reference: a record's URL (``is_bbc``) and its sentences (``overlaps``)."""

    def __init__(self, reference_texts: Iterable[str], min_chars: int = MIN_SENTENCE_CHARS,
                 domains: Sequence[str] = BBC_DOMAINS):
        if min_chars < 1:
            raise ValueError(f"min_chars must be >= 1, got {min_chars}")
        self.min_chars, self.domains = min_chars, tuple(domains)
        self.keys: set[bytes] = set()
        for text in reference_texts:
            self.keys |= sentence_keys(text, min_chars)

    def is_bbc(self, url: str | None) -> bool:
        """Whether the record's URL is on a BBC domain."""
        return is_bbc_url(url, self.domains)

    def overlaps(self, text: str) -> bool:
        """Whether one of the sentences of ``text`` is a reference sentence."""
        return bool(self.keys) and not self.keys.isdisjoint(sentence_keys(text, self.min_chars))


def reference_languages(language: str | languages.Language) -> list[languages.Language]:
    """The XL-Sum languages whose evaluation data ``language``'s text is checked against.

    The language itself, and the XL-Sum languages read from the same mC4 code (both Chinese
    standards read ``zh``, both Serbian scripts ``sr``): one's text may hold the other's articles.
    """
    lang = languages.resolve(language)
    entry = languages.unlabeled_source(lang)
    code = entry.code if entry is not None and entry.available else None
    out = []
    for other in languages.xlsum_languages():
        other_entry = languages.unlabeled_source(other)
        if other == lang or (code is not None and other_entry.code == code):
            out.append(other)
    return out


def xlsum_reference_texts(xlsum_dir: str | os.PathLike, language: str | languages.Language,
                          splits: Sequence[str] = EVAL_SPLITS) -> Iterable[str]:
    """Articles and summaries of the evaluation splits of ``reference_languages(language)`` in an XL-Sum directory."""
    for lang in reference_languages(language):
        for split in splits:
            for example in xlsum(xlsum_dir, lang.name, split):
                yield example["text"]
                yield example["summary"]
