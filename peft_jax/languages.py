"""The one place that maps language codes to languages and their typology.

Facts live in ``peft_jax/resources/languages.tsv``: a tab-separated table with a
header row and the columns ``name, iso1, iso3, bcp47, family, genus, script,
aliases`` (``iso1`` may be empty; ``aliases`` is a comma-separated list of extra
codes such as the ISO 639-3 individual-language codes Tatoeba uses, e.g. ``cmn``,
``pes``, ``swh``). ``name`` is the XL-Sum config name where XL-Sum has the
language; ``script`` is an ISO 15924 code; ``family``/``genus`` follow
WALS/Glottolog at the level of the family and its major branch.

Look-ups are case-insensitive and treat ``-`` and ``_`` alike, so ``zh-Hans``,
``ZH_HANS`` and ``zh_hans`` are one code. Codes shared by several rows belong to
the row listed first in the table, which gives these documented defaults:

* ``zh`` / ``zho`` -> ``chinese_simplified`` (``zh-Hant`` -> ``chinese_traditional``);
* ``sr`` / ``srp`` / ``serbian`` -> ``serbian_cyrillic`` (``sr-Latn`` -> ``serbian_latin``).

Where each XL-Sum language's unlabeled text comes from lives in ``resources/unlabeled_text.tsv``
(``unlabeled_source``): its mC4 code, the script the kept text must be written in and the filter
that enforces it, or no source at all (Kirundi, Oromo, Tigrinya, Nigerian Pidgin are not in mC4).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import pathlib
import re
import threading

TABLE_PATH = pathlib.Path(__file__).resolve().parent / "resources" / "languages.tsv"
_COLUMNS = ("name", "iso1", "iso3", "bcp47", "family", "genus", "script", "aliases")
UNLABELED_TABLE_PATH = TABLE_PATH.with_name("unlabeled_text.tsv")
_UNLABELED_COLUMNS = ("name", "source", "code", "script", "filter", "note")
UNLABELED_SOURCES = ("mc4", "none")
TEXT_FILTERS = ("script", "han_variant", "none")

# The 45 configs of XL-Sum (Hasan et al. 2021), in the dataset's own order.
XLSUM_NAMES = (
    "amharic", "arabic", "azerbaijani", "bengali", "burmese", "chinese_simplified",
    "chinese_traditional", "english", "french", "gujarati", "hausa", "hindi", "igbo",
    "indonesian", "japanese", "kirundi", "korean", "kyrgyz", "marathi", "nepali",
    "oromo", "pashto", "persian", "pidgin", "portuguese", "punjabi", "russian",
    "scottish_gaelic", "serbian_cyrillic", "serbian_latin", "sinhala", "somali",
    "spanish", "swahili", "tamil", "telugu", "thai", "tigrinya", "turkish",
    "ukrainian", "urdu", "uzbek", "vietnamese", "welsh", "yoruba",
)


@dataclasses.dataclass(frozen=True)
class Language:
    """One language: its codes and the typological facts composition uses."""

    name: str
    iso1: str | None
    iso3: str
    bcp47: str
    family: str
    genus: str
    script: str

    def codes(self) -> tuple[str, ...]:
        """The codes that resolve to this language (aliases excluded)."""
        return tuple(c for c in (self.name, self.iso1, self.iso3, self.bcp47) if c)


class UnknownLanguageError(ValueError):
    """A code that names no known language; the message lists close matches."""


class LanguageClashError(ValueError):
    """A language whose code is already taken by a different language."""


class LanguageTableError(ValueError):
    """A malformed row in the languages table (the message names file and line)."""


def _normalize(code: str) -> str:
    """Canonical look-up key: stripped, lower-case, '_' written as '-'."""
    return code.strip().lower().replace("_", "-")


_SCRIPT_RE = re.compile(r"^[A-Z][a-z]{3}$")


def _check_language(language: Language) -> None:
    """Raises ValueError naming the field when ``language`` is malformed."""
    for field in ("name", "iso3", "bcp47", "family", "genus", "script"):
        value = getattr(language, field)
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"Language field {field!r} must be a non-empty string, got {value!r}")
    if language.iso1 is not None and not re.fullmatch(r"[a-z]{2}", language.iso1):
        raise ValueError(f"Language {language.name!r}: iso1 must be two lower-case letters or None, "
                         f"got {language.iso1!r}")
    if not _SCRIPT_RE.match(language.script):
        raise ValueError(f"Language {language.name!r}: script must be an ISO 15924 code like 'Latn', "
                         f"got {language.script!r}")


class _Registry:
    """Ordered languages plus the code -> language index, guarded by a lock."""

    def __init__(self):
        self.languages: dict[str, Language] = {}
        self.index: dict[str, Language] = {}
        self.lock = threading.Lock()

    def add(self, language: Language, aliases: tuple[str, ...] = (), shared_ok: bool = False):
        """Indexes ``language``; a taken code raises unless ``shared_ok`` (table iso codes)."""
        # Name, BCP-47 tag and aliases must be unique; ISO codes of the table may be
        # shared (zh, sr), and then the earlier row keeps them as the default.
        unique = [language.name, language.bcp47, *aliases]
        shareable = [c for c in (language.iso1, language.iso3) if c]
        for code in unique + ([] if shared_ok else shareable):
            owner = self.index.get(_normalize(code))
            if owner is not None and owner != language:
                raise LanguageClashError(
                    f"code {code!r} of language {language.name!r} is already used by "
                    f"{owner.name!r} ({', '.join(owner.codes())})")
        if self.languages.get(language.name) == language:
            return  # registered again (e.g. a second World): keep the first object everywhere
        self.languages[language.name] = language
        for code in unique + shareable:
            self.index.setdefault(_normalize(code), language)


def _parse_row(fields: list[str], line_no: int) -> tuple[Language, tuple[str, ...]]:
    """Builds a Language and its aliases from one table row."""
    where = f"{TABLE_PATH}:{line_no}"
    if len(fields) != len(_COLUMNS):
        raise LanguageTableError(f"{where}: expected {len(_COLUMNS)} tab-separated fields, "
                                 f"got {len(fields)}")
    row = dict(zip(_COLUMNS, (f.strip() for f in fields)))
    aliases = tuple(a.strip() for a in row.pop("aliases").split(",") if a.strip())
    language = Language(**{**row, "iso1": row["iso1"] or None})
    try:
        _check_language(language)
    except ValueError as err:
        raise LanguageTableError(f"{where}: {err}") from None
    return language, aliases


@functools.cache
def _registry() -> _Registry:
    """Loads the table once; later ``register`` calls extend the same registry."""
    registry = _Registry()
    lines = TABLE_PATH.read_text(encoding="utf-8").splitlines()
    if not lines or lines[0].split("\t") != list(_COLUMNS):
        raise LanguageTableError(f"{TABLE_PATH}:1: header must be {'<TAB>'.join(_COLUMNS)}")
    for line_no, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        language, aliases = _parse_row(line.split("\t"), line_no)
        try:
            registry.add(language, aliases, shared_ok=True)
        except LanguageClashError as err:
            raise LanguageTableError(f"{TABLE_PATH}:{line_no}: {err}") from None
    return registry


def resolve(code: str | Language) -> Language:
    """Returns the language named by ``code``: a name, ISO 639-1/3 code, BCP-47 tag or alias.

    Case-insensitive and ``-``/``_`` agnostic. Shared codes go to the default
    listed in the module docstring (``zh`` -> chinese_simplified, ``sr`` ->
    serbian_cyrillic). A ``Language`` is returned unchanged.

    Raises:
      UnknownLanguageError: no language has this code; the message suggests close ones.
    """
    if isinstance(code, Language):
        return code
    if not isinstance(code, str):
        raise UnknownLanguageError(f"language code must be a string, got {type(code).__name__}")
    index = _registry().index
    key = _normalize(code)
    if key in index:
        return index[key]
    close = difflib.get_close_matches(key, list(index), n=4, cutoff=0.6)
    hint = ", ".join(f"{c!r} ({index[c].name})" for c in close) or "none"
    raise UnknownLanguageError(f"unknown language code {code!r}; close matches: {hint}. "
                               f"Known languages are listed in {TABLE_PATH.name}.")


def all_languages() -> tuple[Language, ...]:
    """Every known language: the table's rows in order, then registered ones."""
    return tuple(_registry().languages.values())


def xlsum_languages() -> tuple[Language, ...]:
    """The 45 XL-Sum languages, in the order of ``XLSUM_NAMES``."""
    return tuple(resolve(name) for name in XLSUM_NAMES)


def register(language: Language) -> None:
    """Adds ``language`` at run time (e.g. the made-up languages of a synthetic world).

    Registering an identical language again is a no-op, so set-up code may run twice.

    Raises:
      LanguageClashError: its name, ISO codes or BCP-47 tag already belong to another language.
      ValueError: a field is empty or malformed (the message names the field).
    """
    if not isinstance(language, Language):
        raise TypeError(f"register expects a Language, got {type(language).__name__}")
    _check_language(language)
    registry = _registry()
    with registry.lock:
        registry.add(language)


# ------------------------------------------------------------------------- unlabeled text
@dataclasses.dataclass(frozen=True)
class UnlabeledSource:
    """Where a language module's unlabeled text comes from and how it is kept to the language's script.

    ``source`` is ``"mc4"`` (``code`` names mC4's files, ``c4-<code>.tfrecord-*.json.gz``) or ``"none"``;
    ``filter`` is ``"script"`` (keep documents whose letters are mostly in ``script``), ``"han_variant"``
    (also tell simplified from traditional Chinese) or ``"none"`` (no source).
    """

    language: Language
    source: str
    code: str | None
    script: str
    filter: str
    note: str

    @property
    def available(self) -> bool:
        """Whether the language has unlabeled text at all."""
        return self.source != "none"


def _unlabeled_row(fields: list[str], line_no: int) -> UnlabeledSource:
    """One checked row of the unlabeled-text table."""
    where = f"{UNLABELED_TABLE_PATH}:{line_no}"
    if len(fields) == len(_UNLABELED_COLUMNS) - 1:  # an empty note whose tab an editor trimmed
        fields = [*fields, ""]
    if len(fields) != len(_UNLABELED_COLUMNS):
        raise LanguageTableError(f"{where}: expected {len(_UNLABELED_COLUMNS)} tab-separated fields, got {len(fields)}")
    row = dict(zip(_UNLABELED_COLUMNS, (f.strip() for f in fields)))
    try:
        language = resolve(row["name"])
    except UnknownLanguageError as err:
        raise LanguageTableError(f"{where}: {err}") from None
    checks = [(row["source"] in UNLABELED_SOURCES, f"source must be one of {UNLABELED_SOURCES}"),
              (row["filter"] in TEXT_FILTERS, f"filter must be one of {TEXT_FILTERS}"),
              (row["script"] == language.script, f"script must be {language.script!r} as in {TABLE_PATH.name}"),
              ((row["source"] == "none") == (not row["code"]) == (row["filter"] == "none"),
               "a row has a code and a filter exactly when its source is not 'none'")]
    for ok, message in checks:
        if not ok:
            raise LanguageTableError(f"{where}: {row['name']}: {message}, got {row}")
    return UnlabeledSource(language, row["source"], row["code"] or None, row["script"], row["filter"], row["note"])


@functools.cache
def _unlabeled_table() -> dict[str, UnlabeledSource]:
    """The unlabeled-text table by language name (comment lines start with '#')."""
    lines = UNLABELED_TABLE_PATH.read_text(encoding="utf-8").splitlines()
    numbered = [(i, line) for i, line in enumerate(lines, start=1) if line.strip() and not line.startswith("#")]
    if not numbered or numbered[0][1].split("\t") != list(_UNLABELED_COLUMNS):
        raise LanguageTableError(f"{UNLABELED_TABLE_PATH}: header must be {'<TAB>'.join(_UNLABELED_COLUMNS)}")
    table: dict[str, UnlabeledSource] = {}
    for line_no, line in numbered[1:]:
        row = _unlabeled_row(line.split("\t"), line_no)
        if row.language.name in table:
            raise LanguageTableError(f"{UNLABELED_TABLE_PATH}:{line_no}: a second row for {row.language.name}")
        table[row.language.name] = row
    return table


def unlabeled_source(language: str | Language) -> UnlabeledSource | None:
    """The unlabeled-text entry of ``language``, or None for a language the table does not list.

    Every XL-Sum language is listed; languages outside it (the synthetic world's, or a language
    whose text the user supplies) have no entry, and their text is kept to their script in languages.tsv.
    """
    return _unlabeled_table().get(resolve(language).name)


def has_unlabeled_text(language: str | Language) -> bool:
    """False for a listed language without unlabeled text (its language-module recipes are skipped)."""
    entry = unlabeled_source(language)
    return entry is None or entry.available
