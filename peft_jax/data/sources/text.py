"""Unlabeled text: plain-text and JSON-lines files (gzip too), and mC4's released files.

Streams are re-iterable: each pass re-opens the files and reads them line by line.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

from etils import epath

from peft_jax import fileio, languages
from peft_jax.data.sources.errors import EmptySplitError, MalformedRecordError, MissingDataError
from peft_jax.data.sources.reading import (ReadStats, check_policy, expand_paths, parse_json_record, read_lines,
                                           refuse_json_records, require_dir, select_fields, split_suffix)

_JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")


def _is_json_lines(path: epath.Path) -> bool:
    """True for ``.jsonl``/``.json`` files, compressed or not (mC4's ``*.json.gz``)."""
    name = path.name[:-3] if path.name.endswith(".gz") else path.name
    return name.endswith(_JSON_SUFFIXES)


class TextLines:
    """A re-iterable stream of unlabeled text from plain-text or JSON-lines files.

    Plain text yields one string per non-blank line; JSON lines (``.jsonl``, ``.json``,
    also gzip-compressed like mC4's ``c4-<lang>.tfrecord-*.json.gz``) yield the ``field``
    of each record. A file read as plain text whose first lines are JSON records with a
    ``text`` field is refused (it would train on raw JSON). ``stats`` holds the counters
    of the latest pass.
    """

    def __init__(self, paths: Sequence[epath.Path], field: str = "text", fmt: str = "auto",
                 on_bad_utf8: str = "fail"):
        if fmt not in ("auto", "text", "jsonl"):
            raise ValueError(f"format must be 'auto', 'text' or 'jsonl', got {fmt!r}")
        check_policy(on_bad_utf8)
        self.paths, self.field, self.fmt, self.on_bad_utf8 = list(paths), field, fmt, on_bad_utf8
        self.stats = ReadStats()

    def _is_json(self, path: epath.Path) -> bool:
        """Whether ``path`` is read as JSON lines under this stream's format."""
        return self.fmt == "jsonl" or (self.fmt == "auto" and _is_json_lines(path))

    def records(self) -> Iterator[tuple[str, str | None]]:
        """``(text, url)`` of every record: the JSON record's ``url`` field (mC4 has one), None for plain text."""
        self.stats = ReadStats()
        for path in self.paths:
            is_json = self._is_json(path)
            if not is_json:
                refuse_json_records(path, self.on_bad_utf8)
            for line_no, line in read_lines(path, self.on_bad_utf8, self.stats):
                if not line.strip():
                    continue
                url = None
                if is_json:
                    where = f"{path}:{line_no}"
                    record = parse_json_record(line, where, None)
                    line, url = select_fields(record, (self.field,), where)[self.field], record.get("url")
                    if not isinstance(line, str):
                        raise MalformedRecordError(f"{where}: field {self.field!r} is not a string")
                self.stats.records += 1
                yield line, url if isinstance(url, str) else None
        if self.stats.records == 0:
            raise EmptySplitError(f"no text in {', '.join(map(str, self.paths))}")

    def __iter__(self) -> Iterator[str]:
        return (text for text, _ in self.records())


def text_lines(paths_or_glob: str | os.PathLike | Sequence[str | os.PathLike], *, field: str = "text",
               fmt: str = "auto", on_bad_utf8: str = "fail") -> TextLines:
    """Unlabeled text from plain text, JSON lines or gzip files given as paths or a glob.

    ``fmt="auto"`` treats ``*.jsonl``/``*.json`` (``.gz`` or not) as JSON lines with the
    text in ``field``, and anything else as one text per line.
    """
    return TextLines(expand_paths(paths_or_glob), field, fmt, on_bad_utf8)


def mc4_code(language: str | languages.Language) -> str:
    """The language code mC4 uses in file and split names.

    The unlabeled-text table's code for the languages it lists (``zh`` for both Chinese standards,
    ``sr`` for both Serbian scripts); otherwise ``iw`` for Hebrew, else ISO 639-1/3. A listed
    language without mC4 text raises ``MissingDataError``.
    """
    lang = languages.resolve(language)
    entry = languages.unlabeled_source(lang)
    if entry is not None:
        if not entry.available:
            raise MissingDataError(f"mC4 has no text in {lang.name} ({entry.note}; {languages.UNLABELED_TABLE_PATH.name})")
        return entry.code
    if lang.iso3 == "heb":
        return "iw"
    return lang.iso1 or lang.iso3


def mc4(data_dir: str | os.PathLike, language: str, split: str = "train", *,
        on_bad_utf8: str = "fail") -> TextLines:
    """mC4 documents from its released files ``c4-<lang>[-validation].tfrecord-*.json.gz``."""
    code = mc4_code(language)
    layout = "<dir>/c4-<lang>.tfrecord-NNNNN-of-NNNNN.json.gz and c4-<lang>-validation.tfrecord-*.json.gz"
    require_dir(epath.Path(data_dir), "mC4", layout)
    tag = "" if split_suffix(split) == "train" else "-validation"
    pattern = os.fspath(epath.Path(data_dir) / f"c4-{code}{tag}.tfrecord-*.json.gz")
    if not fileio.glob(pattern):
        raise MissingDataError(f"mC4: no file matches {pattern!r}; expected layout: {layout}")
    return text_lines(pattern, field="text", on_bad_utf8=on_bad_utf8)
