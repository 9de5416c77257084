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

One module per source:

  errors          the error classes (all ``DataError``)
  reading         lines of plain/gzip files, JSON records, path expansion, layout checks
  line_index      random access to JSON-lines and text files (``JsonLinesSource``, ``TextLinesSource``)
  xlsum_dataset   XL-Sum files and the Hugging Face hub
  text            unlabeled text files and mC4
  tatoeba_udhr    Tatoeba sentences and UDHR paragraphs
  wikilingua      WikiLingua in GEM's aligned layout
  tfds_datasets   prepared TFDS datasets (mC4, Wikipedia, WikiLingua)
  array_records   ArrayRecord files of JSON records
"""

from peft_jax.data.sources.array_records import RecordFileSource, write_records
from peft_jax.data.sources.errors import (BadEncodingError, DataError, EmptySplitError, MalformedRecordError,
                                          MissingDataError, MissingDependencyError, MissingFieldError)
from peft_jax.data.sources.line_index import JsonLinesSource, TextLinesSource
from peft_jax.data.sources.reading import (BAD_UTF8_POLICIES, XLSUM_FIELDS, JsonLinesExamples, ReadStats,
                                           expand_paths, parse_json_record, read_lines, split_suffix)
from peft_jax.data.sources.tatoeba_udhr import UDHR_NAMESPACE, UdhrEntry, tatoeba, udhr, udhr_index
from peft_jax.data.sources.text import TextLines, mc4, mc4_code, text_lines
from peft_jax.data.sources.tfds_datasets import (GEM_WIKILINGUA_NAMES, tfds_mc4, tfds_source, tfds_text,
                                                 tfds_wikilingua, tfds_wikipedia)
from peft_jax.data.sources.wikilingua import GEM_LAYOUT, gem_wikilingua
from peft_jax.data.sources.xlsum_dataset import XLSUM_HF_NAME, XLSUM_LAYOUT, xlsum, xlsum_source

__all__ = [
    "BAD_UTF8_POLICIES", "BadEncodingError", "DataError", "EmptySplitError", "GEM_LAYOUT", "GEM_WIKILINGUA_NAMES",
    "JsonLinesExamples", "JsonLinesSource", "MalformedRecordError", "MissingDataError", "MissingDependencyError",
    "MissingFieldError", "ReadStats", "RecordFileSource", "TextLines", "TextLinesSource", "UDHR_NAMESPACE",
    "UdhrEntry", "XLSUM_FIELDS", "XLSUM_HF_NAME", "XLSUM_LAYOUT", "expand_paths", "gem_wikilingua", "mc4",
    "mc4_code", "parse_json_record", "read_lines", "split_suffix", "tatoeba", "text_lines", "tfds_mc4",
    "tfds_source", "tfds_text", "tfds_wikilingua", "tfds_wikipedia", "udhr", "udhr_index", "write_records",
    "xlsum", "xlsum_source",
]
