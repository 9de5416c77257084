"""Reading blocks shared by every source: lines of plain or gzip files, JSON records, paths, checks.

Lines are read one at a time, so a file larger than memory is fine. Invalid UTF-8 either raises
``BadEncodingError`` (``on_bad_utf8="fail"``) or is skipped and counted (``"skip"``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob as glob_lib
import gzip
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from etils import epath

from peft_jax import fileio
from peft_jax.data.sources.errors import (BadEncodingError, DataError, EmptySplitError, MalformedRecordError,
                                          MissingDataError, MissingFieldError)

log = logging.getLogger(__name__)

# Summarization examples from every source are dicts with XL-Sum's fields.
XLSUM_FIELDS = ("id", "title", "summary", "text")
# Split names as users write them -> the suffix of the released file names.
_SPLIT_SUFFIX = {"train": "train", "validation": "val", "val": "val", "dev": "val", "test": "test"}
BAD_UTF8_POLICIES = ("fail", "skip")


@dataclasses.dataclass
class ReadStats:
    """Counters of one pass over a stream; ``skipped_bad_utf8`` lines were dropped."""

    lines: int = 0
    records: int = 0
    skipped_bad_utf8: int = 0


def split_suffix(split: str) -> str:
    """Maps ``train``/``validation``/``val``/``test`` to the released file-name suffix."""
    key = split.strip().lower() if isinstance(split, str) else split
    if key not in _SPLIT_SUFFIX:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(_SPLIT_SUFFIX)}")
    return _SPLIT_SUFFIX[key]


def check_policy(on_bad_utf8: str) -> None:
    """Rejects an unknown ``on_bad_utf8`` value."""
    if on_bad_utf8 not in BAD_UTF8_POLICIES:
        raise ValueError(f"on_bad_utf8 must be one of {BAD_UTF8_POLICIES}, got {on_bad_utf8!r}")


def decode_line(raw: bytes, where: str, on_bad_utf8: str) -> str | None:
    """Decodes one line; returns None for an invalid line under the ``skip`` policy."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        if on_bad_utf8 == "fail":
            raise BadEncodingError(
                f"{where}: not valid UTF-8 ({err.reason} at byte {err.start}); "
                f"pass on_bad_utf8='skip' to skip and count such lines") from None
        return None


@contextlib.contextmanager
def _open_binary(path: epath.Path):
    """Opens a plain or gzip-compressed file, local or remote (`gs://`), for binary line reading."""
    with path.open("rb") as raw:
        yield gzip.GzipFile(fileobj=raw, mode="rb") if path.suffix == ".gz" else raw


def read_lines(path: str | os.PathLike, on_bad_utf8: str = "fail",
               stats: ReadStats | None = None) -> Iterator[tuple[int, str]]:
    """Yields ``(line_number, text)`` of a text or ``.gz`` file, one line at a time.

    Line terminators and a leading byte-order mark are removed. Lines that are not
    UTF-8 raise ``BadEncodingError`` or, with ``on_bad_utf8="skip"``, are skipped and
    counted in ``stats.skipped_bad_utf8`` (and logged once at the end of the file).
    """
    check_policy(on_bad_utf8)
    path = epath.Path(path)
    stats = stats if stats is not None else ReadStats()
    skipped_before = stats.skipped_bad_utf8
    try:
        with _open_binary(path) as f:
            for line_no, raw in enumerate(f, start=1):
                stats.lines += 1
                text = decode_line(raw, f"{path}:{line_no}", on_bad_utf8)
                if text is None:
                    stats.skipped_bad_utf8 += 1
                    continue
                # A BOM only ever starts the first line of a file.
                yield line_no, (text.lstrip("\ufeff") if line_no == 1 else text).rstrip("\r\n")
    except gzip.BadGzipFile as err:
        raise DataError(f"{path}: not a valid gzip file ({err})") from None
    if stats.skipped_bad_utf8 > skipped_before:
        log.warning("%s: skipped %d line(s) that are not valid UTF-8", path,
                    stats.skipped_bad_utf8 - skipped_before)


def parse_json_record(line: str, where: str, fields: Sequence[str] | None) -> dict[str, Any]:
    """Parses one JSON-lines record and keeps ``fields`` (all fields when None).

    Raises:
      MalformedRecordError: the line is not a JSON object (``where`` names file:line).
      MissingFieldError: a required field is absent.
    """
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise MalformedRecordError(f"{where}: malformed JSON line ({err.msg} at column {err.colno})") from None
    if not isinstance(record, dict):
        raise MalformedRecordError(f"{where}: expected a JSON object, got {type(record).__name__}")
    return record if fields is None else select_fields(record, fields, where)


def select_fields(record: dict[str, Any], fields: Sequence[str], where: str) -> dict[str, Any]:
    """``fields`` of a parsed record; a missing one raises MissingFieldError naming ``where``."""
    missing = [f for f in fields if f not in record]
    if missing:
        raise MissingFieldError(f"{where}: missing field(s) {missing}; expected {list(fields)}, "
                                f"found {sorted(record)}")
    return {f: record[f] for f in fields}


# How many leading non-blank lines decide whether a "plain text" file really holds JSON records.
_SNIFF_LINES = 3


def _is_text_record(line: str) -> bool:
    """Whether a line parses as a JSON object with a ``text`` field (an mC4 / JSON-lines record)."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return False
    return isinstance(record, dict) and "text" in record


def refuse_json_records(path: str | os.PathLike, on_bad_utf8: str = "fail") -> None:
    """Raises MalformedRecordError when a file to be read as plain text holds JSON records with a ``text`` field.

    Read line by line, such a file (a decompressed mC4 shard, a renamed ``.jsonl``) would train on raw
    JSON (text, URL and timestamp) with no error. Its first non-blank lines decide.
    """
    lines = []
    for line_no, line in read_lines(path, on_bad_utf8):
        if line.strip():
            lines.append((line_no, line))
        if len(lines) == _SNIFF_LINES:
            break
    if lines and all(_is_text_record(line) for _, line in lines):
        raise MalformedRecordError(
            f"{path}:{lines[0][0]}: looks like JSON records with a 'text' field (an mC4 / JSON-lines file), "
            f"not plain text: read it with the mc4 source: data.mc4(dir, language), text_lines(..., fmt='jsonl'), "
            f"or a text_paths name ending in .json / .jsonl / .json.gz")


def require_dir(path: epath.Path, what: str, layout: str) -> None:
    """Raises MissingDataError (stating the expected layout) when ``path`` is not a directory."""
    if not path.is_dir():
        raise MissingDataError(f"{what} directory {str(path)!r} does not exist; expected layout: {layout}")


def require_file(path: epath.Path, what: str, layout: str, present: Sequence[str] = ()) -> None:
    """Raises MissingDataError naming the missing file, the layout and what is present instead."""
    if not path.is_file():
        hint = f"; present: {', '.join(sorted(present)[:12])}" if present else ""
        raise MissingDataError(f"{what}: file {str(path)!r} not found; expected layout: {layout}{hint}")


def expand_paths(paths_or_glob: str | os.PathLike | Sequence[str | os.PathLike]) -> list[epath.Path]:
    """Expands a path, a glob pattern or a list of them (local or `gs://...`) into sorted, existing files."""
    items = [paths_or_glob] if isinstance(paths_or_glob, (str, os.PathLike)) else list(paths_or_glob)
    out: list[epath.Path] = []
    for item in items:
        item = os.fspath(item)
        if glob_lib.has_magic(item):
            matches = fileio.glob(item)
            if not matches:
                raise MissingDataError(f"no file matches the pattern {item!r}")
            out.extend(epath.Path(m) for m in matches)
        elif not epath.Path(item).is_file():
            raise MissingDataError(f"text file {item!r} not found")
        else:
            out.append(epath.Path(item))
    if not out:
        raise MissingDataError("no input files given")
    return out


class LazyMapped:
    """Re-iterable ``map(fn, factory())`` whose underlying iterable is rebuilt on each pass."""

    def __init__(self, factory: Callable[[], Iterable], fn: Callable):
        self.factory, self.fn = factory, fn

    def __iter__(self):
        return (self.fn(x) for x in self.factory())


class JsonLinesExamples:
    """A re-iterable stream of records from JSON-lines files (optionally gzip-compressed).

    Each iteration re-opens the files and reads them line by line. Blank lines are
    ignored. ``stats`` holds the counters of the latest pass. A pass that yields no
    record raises ``EmptySplitError``.
    """

    def __init__(self, paths: Sequence[epath.Path], fields: Sequence[str] | None,
                 on_bad_utf8: str = "fail", transform: Callable[[dict], Any] | None = None):
        check_policy(on_bad_utf8)
        self.paths = [epath.Path(p) for p in paths]
        self.fields = tuple(fields) if fields is not None else None
        self.on_bad_utf8 = on_bad_utf8
        self.transform = transform
        self.stats = ReadStats()

    def __iter__(self) -> Iterator[Any]:
        self.stats = ReadStats()
        for path in self.paths:
            for line_no, line in read_lines(path, self.on_bad_utf8, self.stats):
                if not line.strip():
                    continue
                record = parse_json_record(line, f"{path}:{line_no}", self.fields)
                self.stats.records += 1
                yield self.transform(record) if self.transform else record
        if self.stats.records == 0:
            names = ", ".join(str(p) for p in self.paths)
            raise EmptySplitError(f"no records in {names} ({self.stats.lines} line(s) read, "
                                  f"{self.stats.skipped_bad_utf8} skipped as invalid UTF-8)")
