"""Tatoeba sentences and the Universal Declaration of Human Rights: small unlabeled text per language."""

from __future__ import annotations

import dataclasses
import os
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator

from etils import epath

from peft_jax import languages
from peft_jax.data.sources.errors import MalformedRecordError, MissingDataError
from peft_jax.data.sources.reading import require_dir, require_file
from peft_jax.data.sources.text import TextLines

UDHR_NAMESPACE = "http://www.unhchr.ch/udhr"


def _tatoeba_files(root: epath.Path) -> dict[str, list[epath.Path]]:
    """Maps language names to their Tatoeba files (English maps to every ``*.eng`` side)."""
    files: dict[str, list[epath.Path]] = {}
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
    root = epath.Path(data_dir)
    layout = "<dir>/tatoeba.<xxx>-eng.<xxx> and tatoeba.<xxx>-eng.eng (<xxx>: ISO 639-3)"
    require_dir(root, "Tatoeba", layout)
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
    root = epath.Path(data_dir)
    layout = "<dir>/index.xml and <dir>/udhr_<key>.xml (namespace http://www.unhchr.ch/udhr)"
    require_dir(root, "UDHR", layout)
    require_file(root / "index.xml", "UDHR index", layout)
    try:
        with (root / "index.xml").open("rb") as f:
            tree = ET.parse(f)
    except ET.ParseError as err:
        raise MalformedRecordError(f"{root / 'index.xml'}: malformed XML ({err})") from None
    return [UdhrEntry(e.get("f", ""), e.get("iso639-3", ""), e.get("iso15924", ""), e.get("bcp47", ""))
            for e in tree.getroot().iter("udhr")]


def _udhr_file(root: epath.Path, lang: languages.Language) -> epath.Path:
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

    def __init__(self, path: epath.Path):
        self.path = path

    def __iter__(self) -> Iterator[str]:
        ns = "{" + UDHR_NAMESPACE + "}"
        try:
            with self.path.open("rb") as f:
                root = ET.parse(f).getroot()  # UDHR files are small (~60 paragraphs)
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
    return _UdhrParagraphs(_udhr_file(epath.Path(data_dir), lang))
