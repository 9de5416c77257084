"""Choosing the languages related to a target: by family, genus, script or typological distance.

Family, genus and script come from `peft_jax.languages` (resources/languages.tsv). Typological vectors
come from resources/typology.tsv: for each language of languages.tsv, the URIEL syntax features (103
bits) and phonology features (28 bits), k-NN imputed where unattested (see the file's header for the
source). The distance between two languages is the cosine distance 1 - cos(u, v) of their vectors,
as lang2vec users compute it; `features` picks "syntax" (default), "phonology" or "syntax+phonology".

  related_languages("nepali", ["hindi", "english", "marathi", "bengali"], by="family")
    -> the candidates of the target's family, nearest first by typological distance
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from typing import Iterable

import numpy as np

from peft_jax import languages

TYPOLOGY_PATH = pathlib.Path(__file__).resolve().parents[1] / "resources" / "typology.tsv"
FEATURE_SETS = ("syntax", "phonology")
_COLUMNS = ["name", "uriel", "observed", "syntax", "phonology"]
BY = ("family", "genus", "script", "typology")


class TypologyError(ValueError):
    """A malformed typology table, an unknown feature set, or a language without typological vector."""


@dataclasses.dataclass(frozen=True)
class _Table:
    feature_names: dict[str, tuple[str, ...]]
    vectors: dict[str, dict[str, np.ndarray]]  # language name -> feature set -> 0/1 vector


def _parse_row(fields: list[str], names: dict, line_no: int) -> tuple[str, dict[str, np.ndarray]]:
    """One table row -> (language name, {feature set: vector}); errors name file and line."""
    where = f"{TYPOLOGY_PATH}:{line_no}"
    if len(fields) != len(_COLUMNS):
        raise TypologyError(f"{where}: expected {len(_COLUMNS)} tab-separated fields, got {len(fields)}")
    row = dict(zip(_COLUMNS, fields))
    vectors = {}
    for fs in FEATURE_SETS:
        bits = row[fs].strip()
        if len(bits) != len(names[fs]) or set(bits) - {"0", "1"}:
            raise TypologyError(f"{where}: {fs} must be {len(names[fs])} characters of 0/1, got {bits[:20]!r}...")
        vectors[fs] = np.frombuffer(bits.encode(), np.uint8) - ord("0")
    return languages.resolve(row["name"]).name, vectors


@functools.cache
def _table() -> _Table:
    """Parses typology.tsv once: '#syntax'/'#phonology' lines name the features, then a header and rows."""
    names, vectors, header_seen = {}, {}, False
    for line_no, line in enumerate(TYPOLOGY_PATH.read_text(encoding="utf-8").splitlines(), start=1):
        fields = line.split("\t")
        if fields[0].lstrip("#") in FEATURE_SETS and line.startswith("#"):
            names[fields[0][1:]] = tuple(fields[1].split(","))
        elif line.startswith("#") or not line.strip():
            continue
        elif not header_seen:
            if fields != _COLUMNS or set(names) != set(FEATURE_SETS):
                raise TypologyError(f"{TYPOLOGY_PATH}:{line_no}: expected the feature lines, then the header "
                                    f"{'<TAB>'.join(_COLUMNS)}")
            header_seen = True
        else:
            name, vecs = _parse_row(fields, names, line_no)
            vectors[name] = vecs
    return _Table(names, vectors)


def typology_vector(code, features: str = "syntax") -> np.ndarray:
    """The 0/1 typological vector of a language (features: syntax, phonology or syntax+phonology)."""
    sets = features.split("+")
    if not sets or any(s not in FEATURE_SETS for s in sets):
        raise TypologyError(f"features must be 'syntax', 'phonology' or 'syntax+phonology', got {features!r}")
    lang = languages.resolve(code)
    table = _table()
    if lang.name not in table.vectors:
        raise TypologyError(f"language {lang.name!r} has no typological vector in {TYPOLOGY_PATH.name}; "
                            "choose related languages by family, genus or script instead")
    return np.concatenate([table.vectors[lang.name][s] for s in sets]).astype(np.float64)


def typological_distance(a, b, features: str = "syntax") -> float:
    """Cosine distance 1 - cos(u, v) between the typological vectors of two languages (0 = identical)."""
    u, v = typology_vector(a, features), typology_vector(b, features)
    norm = np.linalg.norm(u) * np.linalg.norm(v)
    return 1.0 if norm == 0 else float(1.0 - u @ v / norm)


def _distance_or_inf(target, candidate, features: str) -> float:
    """Distance for ranking; languages missing from the table rank last."""
    try:
        return typological_distance(target, candidate, features)
    except TypologyError:
        return float("inf")


def related_languages(target, candidates: Iterable, by: str = "family", k: int | None = None,
                      features: str = "syntax") -> list:
    """The candidates related to `target`, nearest first, at most `k` of them.

    by: "family" / "genus" / "script" keep the candidates that share the target's family, genus or
    ISO 15924 script (Hans and Hant are different scripts), ordered by typological distance (languages
    without a vector last, then input order); "typology" ranks every candidate by distance (target and
    candidates need vectors). The target itself is never returned. Candidates are returned as given
    (codes, names or Language objects).

    Raises:
      ValueError: unknown `by`, a bad `k`, or two candidates naming the same language.
      UnknownLanguageError / TypologyError: a code or vector that does not exist.
    """
    if by not in BY:
        raise ValueError(f"by must be one of {BY}, got {by!r}")
    if k is not None and (not isinstance(k, int) or k < 1):
        raise ValueError(f"k must be a positive integer or None, got {k!r}")
    tgt = languages.resolve(target)
    seen: dict[str, object] = {}
    for c in candidates:
        lang = languages.resolve(c)
        if lang.name in seen:
            raise ValueError(f"candidates {seen[lang.name]!r} and {c!r} are the same language ({lang.name})")
        seen[lang.name] = c
    pool = [(languages.resolve(c), c) for c in seen.values() if languages.resolve(c) != tgt]
    if by == "typology":
        ranked = sorted(pool, key=lambda lc: typological_distance(tgt, lc[0], features))
    else:
        same = [lc for lc in pool if getattr(lc[0], by) == getattr(tgt, by)]
        ranked = sorted(same, key=lambda lc: _distance_or_inf(tgt, lc[0], features))
    return [c for _, c in ranked][:k]
