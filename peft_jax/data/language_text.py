"""The unlabeled text of one language module: read, kept to the language's script, decontaminated, reported.

``prepare_language_text`` reads a language's text files (mC4's JSON lines, ``.json`` / ``.jsonl`` /
``.json.gz``, with ``text`` and ``url`` fields; or plain text, one document a line), and keeps a record
only when

1. its URL is not a BBC page (mC4 records carry one; plain text has none),
2. its letters are mostly in the language's script (``script_filter.ScriptFilter.for_language``: Serbian
   Cyrillic vs Latin, Cyrillic Uzbek, simplified vs traditional Chinese),
3. none of its sentences is a sentence of XL-Sum's validation / test articles or summaries of the
   language (``decontaminate``),

checked in this order, so each dropped record is counted once, under the first test it fails. The kept
documents are written one a line (line breaks inside a document become spaces) to ``<out_dir>/text.txt``,
which the training input pipeline reads with random access, and the counts to
``<out_dir>/data_report.json``: ``{language: {read, kept, dropped_bbc, dropped_script, dropped_overlap, ...}}``.
Reading stops once ``max_kept`` records are kept (mC4 files hold far more documents than a run trains on).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence

from etils import epath

from peft_jax import languages
from peft_jax.data.decontaminate import MIN_SENTENCE_CHARS, Decontaminator, xlsum_reference_texts
from peft_jax.data.script_filter import ScriptFilter
from peft_jax.data.sources import DataError, EmptySplitError, text_lines
from peft_jax.fileio import atomic_write, write_text

TEXT_FILE = "text.txt"
REPORT_FILE = "data_report.json"


class NoUnlabeledTextError(DataError):
    """A language without unlabeled text (unlabeled_text.tsv: source none) and no text given for it."""


def require_unlabeled_text(language: str | languages.Language, given: bool = False) -> None:
    """Raises NoUnlabeledTextError for a language the table lists without text, unless its text is ``given``."""
    entry = languages.unlabeled_source(language)
    if entry is not None and not entry.available and not given:
        raise NoUnlabeledTextError(
            f"{entry.language.name} has no unlabeled text ({entry.note}; {languages.UNLABELED_TABLE_PATH.name}): "
            f"skip the recipes that need its language module, or give its text in data.text_overrides")


@dataclasses.dataclass
class TextReport:
    """Counts of one preparation: every read record is kept or dropped for exactly one reason."""

    read: int = 0
    kept: int = 0
    dropped_bbc: int = 0
    dropped_script: int = 0
    dropped_overlap: int = 0

    def count(self, reason: str | None) -> None:
        """Counts one read record, kept (None) or dropped for ``reason`` ("bbc", "script", "overlap")."""
        self.read += 1
        if reason is None:
            self.kept += 1
        else:
            setattr(self, f"dropped_{reason}", getattr(self, f"dropped_{reason}") + 1)


def _one_line(text: str) -> str:
    """A document on one line: its lines joined by spaces."""
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def _reason(text: str, url: str | None, script: ScriptFilter, clean: Decontaminator) -> str | None:
    """Why a record is dropped ("bbc", "script", "overlap"; the cheap tests first), or None to keep it."""
    if clean.is_bbc(url):
        return "bbc"
    if not script.keeps(text):
        return "script"
    return "overlap" if clean.overlaps(text) else None


def _filter_text(stream, script: ScriptFilter, clean: Decontaminator, report: TextReport, out,
                 max_kept: int | None) -> bool:
    """Writes the kept records of ``stream`` to ``out``; returns whether the stream was read to its end."""
    for text, url in stream.records():
        if max_kept is not None and report.kept >= max_kept:
            return False
        reason = _reason(text, url, script, clean)
        report.count(reason)
        if reason is None:
            out.write(_one_line(text) + "\n")
    return True


def prepare_language_text(language: str | languages.Language, paths: str | os.PathLike | Sequence[str | os.PathLike],
                          out_dir: str | os.PathLike, *, xlsum_dir: str | os.PathLike | None = None,
                          max_kept: int | None = None, min_sentence_chars: int = MIN_SENTENCE_CHARS,
                          on_bad_utf8: str = "fail") -> epath.Path:
    """Writes ``out_dir/text.txt`` (kept documents, one a line) and ``out_dir/data_report.json``; returns the text file.

    Args:
      language: the language of the text (any code ``languages.resolve`` accepts).
      paths: text files or a glob: mC4 / JSON lines (``*.json``, ``*.jsonl``, ``.gz`` too) or plain text.
      out_dir: where the two files go (the language stage's work directory). When both exist from an
        earlier run, nothing is read again.
      xlsum_dir: an XL-Sum directory: its validation and test articles and summaries of the language
        (and of the languages sharing its mC4 code) are the overlap reference; None checks URLs only.
      max_kept: stop reading once this many records are kept (None: read everything).
      min_sentence_chars: shorter normalised sentences are not compared.
      on_bad_utf8: "fail" or "skip" invalid UTF-8 lines.

    Raises:
      EmptySplitError: no record survives the filters (the message gives the counts).
      DataError: unreadable input, e.g. a plain-text file holding JSON records.
    """
    lang = languages.resolve(language)
    out_dir = epath.Path(out_dir)  # local or remote (`gs://`): the writes below are whole-file either way
    text_file, report_file = out_dir / TEXT_FILE, out_dir / REPORT_FILE
    if text_file.is_file() and report_file.is_file():  # written last: the text before it is complete
        return text_file
    stream = text_lines(paths, on_bad_utf8=on_bad_utf8)
    script = ScriptFilter.for_language(lang)
    reference = xlsum_reference_texts(xlsum_dir, lang) if xlsum_dir else ()
    clean = Decontaminator(reference, min_chars=min_sentence_chars)
    report, complete = TextReport(), []

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as out:
            complete.append(_filter_text(stream, script, clean, report, out, max_kept))
        if report.kept == 0:  # raised before the rename: no empty text file is left behind
            raise EmptySplitError(f"no {lang.name} text left in {', '.join(map(str, stream.paths))} after "
                                  f"filtering: {dataclasses.asdict(report)} (script {script.script}"
                                  f"{', Han variant test' if script.han_variant else ''})")

    atomic_write(text_file, write, overwrite=True)
    details = {**dataclasses.asdict(report), "complete": complete[0], "max_kept": max_kept,
               "files": [str(p) for p in stream.paths], "script": script.script,
               "han_variant": script.han_variant, "reference_sentences": len(clean.keys),
               "min_sentence_chars": min_sentence_chars}
    write_text(report_file, json.dumps({lang.name: details}, indent=1, ensure_ascii=False))
    return text_file
