"""Where examples and unlabeled text come from: XL-Sum, WikiLingua, mC4, Tatoeba, UDHR, TFDS.

Two kinds of source live here:

* re-iterable *streams* (``xlsum``, ``text_lines``, ``tatoeba``, ``udhr``, ``gem_wikilingua``,
  ``tfds_text`` ...): each ``iter()`` re-opens the files and reads them line by line, so a
  file larger than memory is fine;
* *random-access* sources for the input pipeline (``JsonLinesSource``, ``TextLinesSource``,
  ``RecordFileSource``): ``len()`` and ``[i]`` backed by a byte-offset index or an
  ArrayRecord file, which is what grain needs to shuffle, shard and checkpoint.

Summarization examples are dicts with the XL-Sum fields ``id, title, summary, text``.
Every language argument goes through ``peft_jax.languages.resolve``, so XL-Sum names,
ISO 639-1/639-3 codes and BCP-47 tags are all accepted. Errors name the file, the line
and what was expected.
"""

from __future__ import annotations

import dataclasses
import glob as glob_lib
import gzip
import itertools
import json
import logging
import os
import pathlib
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from peft_jax import languages

log = logging.getLogger(__name__)

XLSUM_HF_NAME = "csebuetnlp/xlsum"
XLSUM_FIELDS = ("id", "title", "summary", "text")
XLSUM_LAYOUT = "<dir>/<language>_{train,val,test}.jsonl (e.g. english_train.jsonl), one JSON object per line"
# Split names as users write them -> the suffix of the released file names.
_SPLIT_SUFFIX = {"train": "train", "validation": "val", "val": "val", "dev": "val", "test": "test"}
BAD_UTF8_POLICIES = ("fail", "skip")
UDHR_NAMESPACE = "http://www.unhchr.ch/udhr"


class DataError(ValueError):
    """Base class of the data package's errors about bad or missing input."""


class MissingDataError(DataError, FileNotFoundError):
    """A file, directory or prepared dataset is missing; the message states the expected layout."""


class MalformedRecordError(DataError):
    """A line that is not the expected JSON object (the message names file and line)."""


class MissingFieldError(MalformedRecordError):
    """A record without a required field (the message names file, line and field)."""


class EmptySplitError(DataError):
    """A split or file that holds no examples."""


class BadEncodingError(DataError):
    """Text that is not valid UTF-8 while ``on_bad_utf8="fail"``."""


class MissingDependencyError(DataError, ImportError):
    """An optional package (``datasets``, ``tensorflow_datasets``) is needed but not installed."""


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


def _check_policy(on_bad_utf8: str) -> None:
    """Rejects an unknown ``on_bad_utf8`` value."""
    if on_bad_utf8 not in BAD_UTF8_POLICIES:
        raise ValueError(f"on_bad_utf8 must be one of {BAD_UTF8_POLICIES}, got {on_bad_utf8!r}")


def _decode_line(raw: bytes, where: str, on_bad_utf8: str) -> str | None:
    """Decodes one line; returns None for an invalid line under the ``skip`` policy."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        if on_bad_utf8 == "fail":
            raise BadEncodingError(
                f"{where}: not valid UTF-8 ({err.reason} at byte {err.start}); "
                f"pass on_bad_utf8='skip' to skip and count such lines") from None
        return None


def _open_binary(path: pathlib.Path):
    """Opens a plain or gzip-compressed file for binary line reading."""
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_lines(path: str | os.PathLike, on_bad_utf8: str = "fail",
               stats: ReadStats | None = None) -> Iterator[tuple[int, str]]:
    """Yields ``(line_number, text)`` of a text or ``.gz`` file, one line at a time.

    Line terminators and a leading byte-order mark are removed. Lines that are not
    UTF-8 raise ``BadEncodingError`` or, with ``on_bad_utf8="skip"``, are skipped and
    counted in ``stats.skipped_bad_utf8`` (and logged once at the end of the file).
    """
    _check_policy(on_bad_utf8)
    path = pathlib.Path(path)
    stats = stats if stats is not None else ReadStats()
    skipped_before = stats.skipped_bad_utf8
    try:
        with _open_binary(path) as f:
            for line_no, raw in enumerate(f, start=1):
                stats.lines += 1
                text = _decode_line(raw, f"{path}:{line_no}", on_bad_utf8)
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
    if fields is None:
        return record
    missing = [f for f in fields if f not in record]
    if missing:
        raise MissingFieldError(f"{where}: missing field(s) {missing}; expected {list(fields)}, "
                                f"found {sorted(record)}")
    return {f: record[f] for f in fields}


def _require_dir(path: pathlib.Path, what: str, layout: str) -> None:
    """Raises MissingDataError (stating the expected layout) when ``path`` is not a directory."""
    if not path.is_dir():
        raise MissingDataError(f"{what} directory {str(path)!r} does not exist; expected layout: {layout}")


def _require_file(path: pathlib.Path, what: str, layout: str, present: Sequence[str] = ()) -> None:
    """Raises MissingDataError naming the missing file, the layout and what is present instead."""
    if not path.is_file():
        hint = f"; present: {', '.join(sorted(present)[:12])}" if present else ""
        raise MissingDataError(f"{what}: file {str(path)!r} not found; expected layout: {layout}{hint}")


class JsonLinesExamples:
    """A re-iterable stream of records from JSON-lines files (optionally gzip-compressed).

    Each iteration re-opens the files and reads them line by line. Blank lines are
    ignored. ``stats`` holds the counters of the latest pass. A pass that yields no
    record raises ``EmptySplitError``.
    """

    def __init__(self, paths: Sequence[pathlib.Path], fields: Sequence[str] | None,
                 on_bad_utf8: str = "fail", transform: Callable[[dict], Any] | None = None):
        _check_policy(on_bad_utf8)
        self.paths = [pathlib.Path(p) for p in paths]
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


def _xlsum_record(record: dict) -> dict[str, str]:
    """Checks that the XL-Sum fields are strings (ids may be numbers in some dumps)."""
    out = {"id": str(record["id"])}
    for field in ("title", "summary", "text"):
        if not isinstance(record[field], str):
            raise MalformedRecordError(f"XL-Sum record {out['id']}: field {field!r} must be a string, "
                                       f"got {type(record[field]).__name__}")
        out[field] = record[field]
    return out


def xlsum(source: str | os.PathLike, language: str, split: str, *,
          on_bad_utf8: str = "fail") -> Iterable[dict[str, str]]:
    """XL-Sum examples (dicts ``id, title, summary, text``) for one language and split.

    Args:
      source: a directory in the released layout ``<language>_{train,val,test}.jsonl``
        or the Hugging Face dataset name ``csebuetnlp/xlsum`` (needs ``datasets`` and network).
      language: XL-Sum name, ISO 639-1/3 code or BCP-47 tag (``languages.resolve``).
      split: ``train``, ``validation`` (or ``val``) or ``test``.
      on_bad_utf8: ``"fail"`` raises on a line that is not UTF-8; ``"skip"`` drops and counts it.

    Returns:
      A re-iterable stream; local files are read line by line, never loaded whole.
    """
    lang = languages.resolve(language)
    suffix = split_suffix(split)
    if str(source) == XLSUM_HF_NAME or str(source).startswith("hf://"):
        return _xlsum_hf(str(source).removeprefix("hf://"), lang, suffix)
    root = pathlib.Path(source)
    _require_dir(root, "XL-Sum", XLSUM_LAYOUT)
    path = root / f"{lang.name}_{suffix}.jsonl"
    _require_file(path, f"XL-Sum {lang.name} {split}", XLSUM_LAYOUT,
                  [p.name for p in root.glob(f"{lang.name}_*.jsonl")])
    if path.stat().st_size == 0:
        raise EmptySplitError(f"{path}: empty file, XL-Sum split {split!r} of {lang.name} has no examples")
    return JsonLinesExamples([path], XLSUM_FIELDS, on_bad_utf8, _xlsum_record)


class _LazyMapped:
    """Re-iterable ``map(fn, factory())`` whose underlying iterable is rebuilt on each pass."""

    def __init__(self, factory: Callable[[], Iterable], fn: Callable):
        self.factory, self.fn = factory, fn

    def __iter__(self):
        return (self.fn(x) for x in self.factory())


def _xlsum_hf(name: str, lang: languages.Language, suffix: str) -> Iterable[dict[str, str]]:
    """Streams XL-Sum from the Hugging Face hub through ``datasets`` (imported lazily)."""
    try:
        import datasets  # pylint: disable=import-outside-toplevel
    except ImportError:
        raise MissingDependencyError(
            f"reading {name!r} from the Hugging Face hub needs the `datasets` package: "
            f"pip install datasets (or download the released files and pass their directory: "
            f"{XLSUM_LAYOUT})") from None
    hf_split = {"val": "validation"}.get(suffix, suffix)
    stream = datasets.load_dataset(name, lang.name, split=hf_split, streaming=True)
    return _LazyMapped(lambda: stream, lambda ex: _xlsum_record({f: ex[f] for f in XLSUM_FIELDS}))


# --- Unlabeled text ---------------------------------------------------------------------

_JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")


def expand_paths(paths_or_glob: str | os.PathLike | Sequence[str | os.PathLike]) -> list[pathlib.Path]:
    """Expands a path, a glob pattern or a list of them into sorted, existing files."""
    items = [paths_or_glob] if isinstance(paths_or_glob, (str, os.PathLike)) else list(paths_or_glob)
    out: list[pathlib.Path] = []
    for item in items:
        item = str(item)
        if glob_lib.has_magic(item):
            matches = sorted(glob_lib.glob(item))
            if not matches:
                raise MissingDataError(f"no file matches the pattern {item!r}")
            out.extend(pathlib.Path(m) for m in matches)
        elif not pathlib.Path(item).is_file():
            raise MissingDataError(f"text file {item!r} not found")
        else:
            out.append(pathlib.Path(item))
    if not out:
        raise MissingDataError("no input files given")
    return out


def _is_json_lines(path: pathlib.Path) -> bool:
    """True for ``.jsonl``/``.json`` files, compressed or not (mC4's ``*.json.gz``)."""
    name = path.name[:-3] if path.name.endswith(".gz") else path.name
    return name.endswith(_JSON_SUFFIXES)


class TextLines:
    """A re-iterable stream of unlabeled text from plain-text or JSON-lines files.

    Plain text yields one string per non-blank line; JSON lines (``.jsonl``, ``.json``,
    also gzip-compressed like mC4's ``c4-<lang>.tfrecord-*.json.gz``) yield the ``field``
    of each record. ``stats`` holds the counters of the latest pass.
    """

    def __init__(self, paths: Sequence[pathlib.Path], field: str = "text", fmt: str = "auto",
                 on_bad_utf8: str = "fail"):
        if fmt not in ("auto", "text", "jsonl"):
            raise ValueError(f"format must be 'auto', 'text' or 'jsonl', got {fmt!r}")
        _check_policy(on_bad_utf8)
        self.paths, self.field, self.fmt, self.on_bad_utf8 = list(paths), field, fmt, on_bad_utf8
        self.stats = ReadStats()

    def _is_json(self, path: pathlib.Path) -> bool:
        """Whether ``path`` is read as JSON lines under this stream's format."""
        return self.fmt == "jsonl" or (self.fmt == "auto" and _is_json_lines(path))

    def __iter__(self) -> Iterator[str]:
        self.stats = ReadStats()
        for path in self.paths:
            is_json = self._is_json(path)
            for line_no, line in read_lines(path, self.on_bad_utf8, self.stats):
                if not line.strip():
                    continue
                if is_json:
                    line = parse_json_record(line, f"{path}:{line_no}", (self.field,))[self.field]
                    if not isinstance(line, str):
                        raise MalformedRecordError(f"{path}:{line_no}: field {self.field!r} is not a string")
                self.stats.records += 1
                yield line
        if self.stats.records == 0:
            raise EmptySplitError(f"no text in {', '.join(map(str, self.paths))}")


def text_lines(paths_or_glob: str | os.PathLike | Sequence[str | os.PathLike], *, field: str = "text",
               fmt: str = "auto", on_bad_utf8: str = "fail") -> TextLines:
    """Unlabeled text from plain text, JSON lines or gzip files given as paths or a glob.

    ``fmt="auto"`` treats ``*.jsonl``/``*.json`` (``.gz`` or not) as JSON lines with the
    text in ``field``, and anything else as one text per line.
    """
    return TextLines(expand_paths(paths_or_glob), field, fmt, on_bad_utf8)


def mc4_code(language: str | languages.Language) -> str:
    """The language code mC4 uses in file and split names (``iw`` for Hebrew, else ISO 639-1/3)."""
    lang = languages.resolve(language)
    if lang.iso3 == "heb":
        return "iw"
    return lang.iso1 or lang.iso3


def mc4(data_dir: str | os.PathLike, language: str, split: str = "train", *,
        on_bad_utf8: str = "fail") -> TextLines:
    """mC4 documents from its released files ``c4-<lang>[-validation].tfrecord-*.json.gz``."""
    code = mc4_code(language)
    layout = "<dir>/c4-<lang>.tfrecord-NNNNN-of-NNNNN.json.gz and c4-<lang>-validation.tfrecord-*.json.gz"
    _require_dir(pathlib.Path(data_dir), "mC4", layout)
    tag = "" if split_suffix(split) == "train" else "-validation"
    pattern = str(pathlib.Path(data_dir) / f"c4-{code}{tag}.tfrecord-*.json.gz")
    if not glob_lib.glob(pattern):
        raise MissingDataError(f"mC4: no file matches {pattern!r}; expected layout: {layout}")
    return text_lines(pattern, field="text", on_bad_utf8=on_bad_utf8)


def _tatoeba_files(root: pathlib.Path) -> dict[str, list[pathlib.Path]]:
    """Maps language names to their Tatoeba files (English maps to every ``*.eng`` side)."""
    files: dict[str, list[pathlib.Path]] = {}
    for path in sorted(root.glob("tatoeba.*-eng.*")):
        code = path.name.split(".")[-1]
        try:
            name = languages.resolve(code).name
        except languages.UnknownLanguageError:
            continue  # Tatoeba has languages the table does not list; they are not requested.
        files.setdefault(name, []).append(path)
    return files


class _Deduplicated:
    """Re-iterable stream that drops exact repeats (English recurs across Tatoeba pairs)."""

    def __init__(self, stream: Iterable[str]):
        self.stream = stream

    def __iter__(self):
        seen: set[str] = set()  # Tatoeba's English side is small (~70k sentences)
        for text in self.stream:
            if text not in seen:
                seen.add(text)
                yield text


def tatoeba(data_dir: str | os.PathLike, language: str, *, on_bad_utf8: str = "fail") -> Iterable[str]:
    """Tatoeba sentences of one language (``tatoeba.<xxx>-eng.<xxx>``, one per line).

    English is the union of the English sides of all pairs, without repeats.
    """
    root = pathlib.Path(data_dir)
    layout = "<dir>/tatoeba.<xxx>-eng.<xxx> and tatoeba.<xxx>-eng.eng (<xxx>: ISO 639-3)"
    _require_dir(root, "Tatoeba", layout)
    lang = languages.resolve(language)
    files = _tatoeba_files(root)
    if lang.name not in files:
        raise MissingDataError(f"Tatoeba: no file for {lang.name} ({lang.iso3}) in {str(root)!r}; "
                               f"expected layout: {layout}; languages present: {len(files)}")
    paths = files[lang.name]
    if lang.iso3 == "eng":
        return _Deduplicated(TextLines(paths, fmt="text", on_bad_utf8=on_bad_utf8))
    own = [p for p in paths if not p.name.endswith(".eng")]
    return TextLines(own, fmt="text", on_bad_utf8=on_bad_utf8)


@dataclasses.dataclass(frozen=True)
class UdhrEntry:
    """One row of the UDHR ``index.xml``: file key, ISO 639-3, script, BCP-47 tag."""

    key: str
    iso3: str
    script: str
    bcp47: str


def udhr_index(data_dir: str | os.PathLike) -> list[UdhrEntry]:
    """Reads ``index.xml`` of the UDHR collection (file ``udhr_<key>.xml`` per entry)."""
    root = pathlib.Path(data_dir)
    layout = "<dir>/index.xml and <dir>/udhr_<key>.xml (namespace http://www.unhchr.ch/udhr)"
    _require_dir(root, "UDHR", layout)
    _require_file(root / "index.xml", "UDHR index", layout)
    try:
        tree = ET.parse(root / "index.xml")
    except ET.ParseError as err:
        raise MalformedRecordError(f"{root / 'index.xml'}: malformed XML ({err})") from None
    return [UdhrEntry(e.get("f", ""), e.get("iso639-3", ""), e.get("iso15924", ""), e.get("bcp47", ""))
            for e in tree.getroot().iter("udhr")]


def _udhr_file(root: pathlib.Path, lang: languages.Language) -> pathlib.Path:
    """Picks the UDHR file of ``lang``: same language, preferring its script and BCP-47 tag."""
    matches = []
    for entry in udhr_index(root):
        try:
            if languages.resolve(entry.iso3) != languages.resolve(lang.iso3):
                continue
        except languages.UnknownLanguageError:
            continue
        path = root / f"udhr_{entry.key}.xml"
        if path.is_file():
            matches.append(((entry.script == lang.script, entry.bcp47 == lang.bcp47), path))
    if not matches:
        raise MissingDataError(f"UDHR: no file for {lang.name} ({lang.iso3}) listed in "
                               f"{root / 'index.xml'} and present in {str(root)!r}")
    # Stable sort: the best script/tag match wins, ties keep the index order.
    return sorted(matches, key=lambda m: m[0], reverse=True)[0][1]


class _UdhrParagraphs:
    """Re-iterable paragraphs (titles and paras, notes excluded) of one UDHR XML file."""

    def __init__(self, path: pathlib.Path):
        self.path = path

    def __iter__(self) -> Iterator[str]:
        ns = "{" + UDHR_NAMESPACE + "}"
        try:
            root = ET.parse(self.path).getroot()  # UDHR files are small (~60 paragraphs)
        except ET.ParseError as err:
            raise MalformedRecordError(f"{self.path}: malformed XML ({err})") from None
        if root.tag != ns + "udhr":
            raise MalformedRecordError(f"{self.path}: root element is {root.tag!r}, "
                                       f"expected 'udhr' in namespace {UDHR_NAMESPACE}")
        for part in root:
            if part.tag == ns + "note":
                continue
            for el in part.iter():
                if el.tag in (ns + "title", ns + "para"):
                    text = " ".join("".join(el.itertext()).split())
                    if text:
                        yield text


def udhr(data_dir: str | os.PathLike, language: str) -> Iterable[str]:
    """Paragraphs of the Universal Declaration of Human Rights in one language."""
    lang = languages.resolve(language)
    return _UdhrParagraphs(_udhr_file(pathlib.Path(data_dir), lang))


# --- WikiLingua (GEM) -------------------------------------------------------------------

GEM_LAYOUT = ("<dir>/wiki_lingua_<name>_<xx>/{train,val,test}.{src,tgt}.{xx,en} "
              "(aligned lines; e.g. wiki_lingua_arabic_ar/test.src.ar)")


def _gem_dir(root: pathlib.Path, code: str) -> pathlib.Path:
    """Finds ``wiki_lingua_<name>_<code>`` under the GEM directory."""
    found = sorted(p for p in root.glob(f"wiki_lingua_*_{code}") if p.is_dir())
    if not found:
        present = [p.name for p in root.glob("wiki_lingua_*")]
        raise MissingDataError(f"GEM WikiLingua: no directory wiki_lingua_<name>_{code} in {str(root)!r}; "
                               f"expected layout: {GEM_LAYOUT}; present: {', '.join(sorted(present))}")
    return found[0]


class _AlignedExamples:
    """Examples zipped from line-aligned source/target files; unequal lengths raise."""

    def __init__(self, src: pathlib.Path, tgt: pathlib.Path, id_prefix: str, on_bad_utf8: str):
        self.src, self.tgt, self.id_prefix, self.on_bad_utf8 = src, tgt, id_prefix, on_bad_utf8

    def __iter__(self) -> Iterator[dict[str, str]]:
        pairs = itertools.zip_longest(read_lines(self.src, self.on_bad_utf8),
                                      read_lines(self.tgt, self.on_bad_utf8))
        count = 0
        for index, (s, t) in enumerate(pairs):
            if s is None or t is None:
                short, line_no = (self.src, t[0]) if s is None else (self.tgt, s[0])
                raise MalformedRecordError(f"{self.src} and {self.tgt} are not line-aligned: "
                                           f"{short} ends before line {line_no}")
            count += 1
            yield {"id": f"{self.id_prefix}-{index}", "title": "", "summary": t[1].strip(), "text": s[1].strip()}
        if count == 0:
            raise EmptySplitError(f"no examples in {self.src}")


def gem_wikilingua(data_dir: str | os.PathLike, language: str, split: str, *,
                   summary_language: str | None = None, on_bad_utf8: str = "fail") -> Iterable[dict[str, str]]:
    """WikiLingua examples in the GEM aligned text layout (``title`` is empty: it has none).

    ``language`` is the article's language; ``summary_language`` (default: the same)
    may be English for the cross-lingual task, read from ``<split>.tgt.en`` of the
    language's directory.
    """
    root = pathlib.Path(data_dir)
    _require_dir(root, "GEM", GEM_LAYOUT)
    lang = languages.resolve(language)
    out_lang = languages.resolve(summary_language) if summary_language else lang
    code, out_code = lang.iso1 or lang.iso3, out_lang.iso1 or out_lang.iso3
    directory = _gem_dir(root, code)
    suffix = split_suffix(split)
    src, tgt = directory / f"{suffix}.src.{code}", directory / f"{suffix}.tgt.{out_code}"
    for path in (src, tgt):
        _require_file(path, f"GEM WikiLingua {lang.name}->{out_lang.name} {split}", GEM_LAYOUT,
                      [p.name for p in directory.iterdir()])
    return _AlignedExamples(src, tgt, f"{directory.name}-{suffix}", on_bad_utf8)


# --- TFDS ---------------------------------------------------------------------------------

def _import_tfds():
    """Imports tensorflow_datasets lazily with a clear error when it is missing."""
    try:
        import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    except ImportError:
        raise MissingDependencyError("TFDS sources need `tensorflow-datasets`: "
                                     "pip install tensorflow-datasets") from None
    return tfds


def tfds_source(name: str, split: str, data_dir: str | os.PathLike | None = None) -> Sequence[Any]:
    """Random access to a TFDS dataset prepared in ArrayRecord format (never downloads).

    Raises:
      MissingDataError: the dataset is not prepared under ``data_dir``; the message gives
        the command that prepares it on a machine with network.
    """
    tfds = _import_tfds()
    try:
        return tfds.data_source(name, split=split, data_dir=None if data_dir is None else str(data_dir),
                                download=False)
    except Exception as err:  # TFDS raises several unrelated types for "not prepared"
        raise MissingDataError(
            f"TFDS dataset {name!r} split {split!r} is not prepared in data_dir={data_dir!r} "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); prepare it once "
            f"with network: tfds build {name} --data_dir=<dir> --file_format=array_record") from err


def _to_str(value: Any) -> str:
    """TFDS returns text features as bytes; decode them strictly."""
    return value.decode("utf-8") if isinstance(value, (bytes, np.bytes_)) else str(value)


def tfds_text(name: str, split: str, *, data_dir: str | os.PathLike | None = None,
              field: str = "text") -> Iterable[str]:
    """Unlabeled text (``field`` of each example) from a prepared TFDS dataset."""
    source = tfds_source(name, split, data_dir)
    return _LazyMapped(lambda: (source[i] for i in range(len(source))), lambda ex: _to_str(ex[field]))


def tfds_mc4(language: str, split: str = "train", *, data_dir: str | os.PathLike | None = None) -> Iterable[str]:
    """mC4 text through TFDS ``c4/multilingual`` (splits ``<lang>`` and ``<lang>-validation``)."""
    tag = "" if split_suffix(split) == "train" else "-validation"
    return tfds_text("c4/multilingual", f"{mc4_code(language)}{tag}", data_dir=data_dir)


def tfds_wikipedia(language: str, *, date: str = "20230601",
                   data_dir: str | os.PathLike | None = None) -> Iterable[str]:
    """Wikipedia articles through TFDS ``wikipedia/<date>.<lang>`` (split ``train``)."""
    return tfds_text(f"wikipedia/{date}.{mc4_code(language)}", "train", data_dir=data_dir)


# GEM's WikiLingua config names use GEM's own language names.
GEM_WIKILINGUA_NAMES = {
    "ar": "arabic", "zh": "chinese", "cs": "czech", "nl": "dutch", "en": "english", "fr": "french",
    "de": "german", "hi": "hindi", "id": "indonesian", "it": "italian", "ja": "japanese",
    "ko": "korean", "pt": "portuguese", "ru": "russian", "es": "spanish", "th": "thai",
    "tr": "turkish", "vi": "vietnamese",
}


def tfds_wikilingua(language: str, split: str, *, summary_language: str | None = None,
                    data_dir: str | os.PathLike | None = None) -> Iterable[dict[str, str]]:
    """WikiLingua examples through TFDS ``gem/wiki_lingua_<name>_<xx>``."""
    lang = languages.resolve(language)
    out = languages.resolve(summary_language) if summary_language else lang
    if lang.iso1 not in GEM_WIKILINGUA_NAMES or (out.iso1 not in (lang.iso1, "en")):
        raise ValueError(f"GEM WikiLingua has {sorted(GEM_WIKILINGUA_NAMES)} articles with summaries in "
                         f"the same language or English; got {lang.name} -> {out.name}")
    config = f"wiki_lingua_{GEM_WIKILINGUA_NAMES[lang.iso1]}_{lang.iso1}"
    source = tfds_source(f"gem/{config}", {"val": "validation"}.get(split_suffix(split), split_suffix(split)),
                         data_dir)

    def convert(ex):
        """TFDS GEM example -> XL-Sum fields, in the requested languages."""
        return {"id": _to_str(ex["gem_id"]), "title": "",
                "summary": _to_str(ex["target_aligned"][out.iso1]),
                "text": _to_str(ex["source_aligned"][lang.iso1])}
    return _LazyMapped(lambda: (source[i] for i in range(len(source))), convert)


# --- Random-access sources for the pipeline ----------------------------------------------

class _LineIndex:
    """Byte offsets of the non-blank lines of uncompressed files, built in one streaming pass.

    Only three int64 numbers per line are kept in memory; records are read back with
    ``os.pread`` so a source can be shared by reader threads without seeking.
    """

    def __init__(self, paths: Sequence[str | os.PathLike], on_bad_utf8: str = "fail"):
        _check_policy(on_bad_utf8)
        self.paths = [pathlib.Path(p) for p in paths]
        self.on_bad_utf8 = on_bad_utf8
        self.stats = ReadStats()
        columns = [self._index_file(i, p) for i, p in enumerate(self.paths)] or [(np.zeros(0, np.int64),) * 3]
        self.file_ids = np.concatenate([c[0] for c in columns])
        self.offsets = np.concatenate([c[1] for c in columns])
        self.line_numbers = np.concatenate([c[2] for c in columns])
        if len(self.offsets) == 0:
            raise EmptySplitError(f"no records in {', '.join(map(str, self.paths))} "
                                  f"({self.stats.skipped_bad_utf8} line(s) skipped as invalid UTF-8)")
        self._fds: dict[int, int] = {}
        self._lock = threading.Lock()

    def _index_file(self, file_id: int, path: pathlib.Path) -> tuple[np.ndarray, ...]:
        """Scans one file; returns (file ids, byte offsets, line numbers) of its usable lines."""
        if path.suffix == ".gz":
            raise DataError(f"{path}: gzip files have no random access; stream them with text_lines() "
                            f"or convert them once with write_records()")
        if not path.is_file():
            raise MissingDataError(f"file {str(path)!r} not found")
        offsets, numbers, offset = [], [], 0
        with open(path, "rb") as f:
            for line_no, raw in enumerate(f, start=1):
                self.stats.lines += 1
                text = _decode_line(raw, f"{path}:{line_no}", self.on_bad_utf8)
                if text is None:
                    self.stats.skipped_bad_utf8 += 1
                elif text.strip():
                    offsets.append(offset)
                    numbers.append(line_no)
                offset += len(raw)
        self.stats.records += len(offsets)
        return (np.full(len(offsets), file_id, np.int64), np.asarray(offsets, np.int64),
                np.asarray(numbers, np.int64))

    def __len__(self) -> int:
        return len(self.offsets)

    def _fd(self, file_id: int) -> int:
        """The descriptor of a file, opened on first use (reader threads share it via pread)."""
        with self._lock:
            if file_id not in self._fds:
                self._fds[file_id] = os.open(self.paths[file_id], os.O_RDONLY)
            return self._fds[file_id]

    def line(self, index: int) -> tuple[str, str]:
        """Returns ``(text, "file:line")`` of record ``index``."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"record {index} out of range for {len(self)} records")
        file_id, offset = int(self.file_ids[index]), int(self.offsets[index])
        fd, chunk, parts = self._fd(file_id), 1 << 16, []
        while True:  # read until the end of the line; lines may exceed one chunk
            data = os.pread(fd, chunk, offset)
            cut = data.find(b"\n")
            parts.append(data if cut < 0 else data[:cut])
            if cut >= 0 or len(data) < chunk:
                break
            offset += len(data)
        text = b"".join(parts).decode("utf-8").rstrip("\r")
        if int(self.line_numbers[index]) == 1:
            text = text.lstrip("\ufeff")
        return text, f"{self.paths[file_id]}:{int(self.line_numbers[index])}"

    def __getstate__(self):
        # File descriptors and locks do not survive pickling (grain worker processes).
        state = self.__dict__.copy()
        state["_fds"], state["_lock"] = {}, None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def close(self) -> None:
        """Closes the files opened for reading."""
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()

    def __del__(self):
        try:
            self.close()
        except Exception:  # pylint: disable=broad-except
            pass  # at interpreter exit modules may already be gone; the OS closes the files


class JsonLinesSource(_LineIndex):
    """Random-access records of JSON-lines files (``len``, ``[i]``), for grain pipelines.

    Malformed lines raise ``MalformedRecordError`` naming file and line when they are read.
    """

    def __init__(self, paths: Sequence[str | os.PathLike], fields: Sequence[str] | None = XLSUM_FIELDS,
                 on_bad_utf8: str = "fail", transform: Callable[[dict], Any] | None = None):
        super().__init__(paths, on_bad_utf8)
        self.fields = tuple(fields) if fields is not None else None
        self.transform = transform

    def __getitem__(self, index: int) -> Any:
        text, where = self.line(index)
        record = parse_json_record(text, where, self.fields)
        return self.transform(record) if self.transform else record


class TextLinesSource(_LineIndex):
    """Random-access non-blank lines of plain-text files (``len``, ``[i]``)."""

    def __getitem__(self, index: int) -> str:
        return self.line(index)[0]


def xlsum_source(data_dir: str | os.PathLike, language: str, split: str, *,
                 on_bad_utf8: str = "fail") -> JsonLinesSource:
    """Random-access XL-Sum split (released layout) for the input pipeline."""
    stream = xlsum(data_dir, language, split, on_bad_utf8=on_bad_utf8)
    if not isinstance(stream, JsonLinesExamples):
        raise ValueError("xlsum_source needs a local directory; use write_records() to index a hub stream")
    return JsonLinesSource(stream.paths, XLSUM_FIELDS, on_bad_utf8, _xlsum_record)


def write_records(records: Iterable[Any], path: str | os.PathLike) -> int:
    """Writes JSON-serialisable records to an ArrayRecord file; returns how many.

    Any stream (gzip files, TFDS, the hub) can be written once this way and then read
    with random access by ``RecordFileSource`` without holding it in memory.
    """
    from array_record.python.array_record_module import ArrayRecordWriter  # pylint: disable=import-outside-toplevel
    writer = ArrayRecordWriter(str(path), "group_size:1")
    count = 0
    try:
        for record in records:
            writer.write(json.dumps(record, ensure_ascii=False).encode("utf-8"))
            count += 1
    finally:
        writer.close()
    if count == 0:
        raise EmptySplitError(f"no records to write to {path}")
    return count


class RecordFileSource:
    """Random access to the JSON records of ArrayRecord files written by ``write_records``."""

    def __init__(self, paths: str | os.PathLike | Sequence[str | os.PathLike]):
        import grain  # pylint: disable=import-outside-toplevel
        files = expand_paths(paths)
        self._source = grain.sources.ArrayRecordDataSource([str(p) for p in files])

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> Any:
        return json.loads(self._source[index].decode("utf-8"))
