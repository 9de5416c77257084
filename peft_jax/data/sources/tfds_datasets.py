"""TFDS datasets prepared in ArrayRecord format: random access, never downloaded at run time.

``tensorflow_datasets`` is slow to import, so it is imported when a TFDS source is first asked for;
without it, ``MissingDependencyError`` says how to install it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from peft_jax import extras, languages
from peft_jax.data.sources.errors import MissingDataError, MissingDependencyError
from peft_jax.data.sources.reading import LazyMapped, split_suffix
from peft_jax.data.sources.text import mc4_code


def _import_tfds():
    """Imports tensorflow_datasets lazily with a clear error when it is missing."""
    return extras.require("tensorflow_datasets", "TFDS sources", MissingDependencyError)


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
    return LazyMapped(lambda: (source[i] for i in range(len(source))), lambda ex: _to_str(ex[field]))


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
    return LazyMapped(lambda: (source[i] for i in range(len(source))), convert)
