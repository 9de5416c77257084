"""XL-Sum: its released JSON-lines files (streamed or random access) or the Hugging Face hub."""

from __future__ import annotations

import os
from collections.abc import Iterable

from etils import epath

from peft_jax import languages
from peft_jax.data.sources.errors import EmptySplitError, MalformedRecordError, MissingDependencyError
from peft_jax.data.sources.line_index import JsonLinesSource
from peft_jax.data.sources.reading import (XLSUM_FIELDS, JsonLinesExamples, LazyMapped, require_dir,
                                           require_file, split_suffix)

XLSUM_HF_NAME = "csebuetnlp/xlsum"
XLSUM_LAYOUT = "<dir>/<language>_{train,val,test}.jsonl (e.g. english_train.jsonl), one JSON object per line"


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
    root = epath.Path(source)
    require_dir(root, "XL-Sum", XLSUM_LAYOUT)
    path = root / f"{lang.name}_{suffix}.jsonl"
    require_file(path, f"XL-Sum {lang.name} {split}", XLSUM_LAYOUT,
                 [p.name for p in root.glob(f"{lang.name}_*.jsonl")])
    if path.stat().length == 0:
        raise EmptySplitError(f"{path}: empty file, XL-Sum split {split!r} of {lang.name} has no examples")
    return JsonLinesExamples([path], XLSUM_FIELDS, on_bad_utf8, _xlsum_record)


def _xlsum_hf(name: str, lang: languages.Language, suffix: str) -> Iterable[dict[str, str]]:
    """Streams XL-Sum from the Hugging Face hub through ``datasets`` (an optional package)."""
    try:
        import datasets  # pylint: disable=import-outside-toplevel
    except ImportError:
        raise MissingDependencyError(
            f"reading {name!r} from the Hugging Face hub needs the `datasets` package: "
            f"pip install datasets (or download the released files and pass their directory: "
            f"{XLSUM_LAYOUT})") from None
    hf_split = {"val": "validation"}.get(suffix, suffix)
    stream = datasets.load_dataset(name, lang.name, split=hf_split, streaming=True)
    return LazyMapped(lambda: stream, lambda ex: _xlsum_record({f: ex[f] for f in XLSUM_FIELDS}))


def xlsum_source(data_dir: str | os.PathLike, language: str, split: str, *,
                 on_bad_utf8: str = "fail") -> JsonLinesSource:
    """Random-access XL-Sum split (released layout) for the input pipeline."""
    stream = xlsum(data_dir, language, split, on_bad_utf8=on_bad_utf8)
    if not isinstance(stream, JsonLinesExamples):
        raise ValueError("xlsum_source needs a local directory; use write_records() to index a hub stream")
    return JsonLinesSource(stream.paths, XLSUM_FIELDS, on_bad_utf8, _xlsum_record)
