"""WikiLingua in GEM's aligned text layout: article and summary files, one example per line pair."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Iterator

from etils import epath

from peft_jax import languages
from peft_jax.data.sources.errors import EmptySplitError, MalformedRecordError, MissingDataError
from peft_jax.data.sources.reading import read_lines, require_dir, require_file, split_suffix

GEM_LAYOUT = ("<dir>/wiki_lingua_<name>_<xx>/{train,val,test}.{src,tgt}.{xx,en} "
              "(aligned lines; e.g. wiki_lingua_arabic_ar/test.src.ar)")


def _gem_dir(root: epath.Path, code: str) -> epath.Path:
    """Finds ``wiki_lingua_<name>_<code>`` under the GEM directory."""
    found = sorted(p for p in root.glob(f"wiki_lingua_*_{code}") if p.is_dir())
    if not found:
        present = [p.name for p in root.glob("wiki_lingua_*")]
        raise MissingDataError(f"GEM WikiLingua: no directory wiki_lingua_<name>_{code} in {str(root)!r}; "
                               f"expected layout: {GEM_LAYOUT}; present: {', '.join(sorted(present))}")
    return found[0]


class _AlignedExamples:
    """Examples zipped from line-aligned source/target files; unequal lengths raise."""

    def __init__(self, src: epath.Path, tgt: epath.Path, id_prefix: str, on_bad_utf8: str):
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
    root = epath.Path(data_dir)
    require_dir(root, "GEM", GEM_LAYOUT)
    lang = languages.resolve(language)
    out_lang = languages.resolve(summary_language) if summary_language else lang
    code, out_code = lang.iso1 or lang.iso3, out_lang.iso1 or out_lang.iso3
    directory = _gem_dir(root, code)
    suffix = split_suffix(split)
    src, tgt = directory / f"{suffix}.src.{code}", directory / f"{suffix}.tgt.{out_code}"
    for path in (src, tgt):
        require_file(path, f"GEM WikiLingua {lang.name}->{out_lang.name} {split}", GEM_LAYOUT,
                      [p.name for p in directory.iterdir()])
    return _AlignedExamples(src, tgt, f"{directory.name}-{suffix}", on_bad_utf8)
