"""Data for language and task arithmetic: sources, tokenizers, features, pipelines, a synthetic world.

* ``sources``: XL-Sum, WikiLingua (GEM), mC4, Tatoeba, UDHR and TFDS readers, plus
  random-access sources for pipelines; clear errors for missing or malformed data.
* ``tokenizers``: SentencePiece / Hugging Face tokenizers with T5 sentinels; training.
* ``preprocess``: t5x features (encoder-decoder, causal and prefix LM), span corruption.
* ``pipeline``: deterministic, sharded, checkpointable grain iterators, optional packing.
* ``synthetic``: the embedded multilingual world the README's main command runs on.
"""

from peft_jax.data.pipeline import Packing, load_state, make_dataset, make_iterator, save_state, with_rng
from peft_jax.data.preprocess import (XLSUM_MAX_INPUT_LEN, XLSUM_MAX_TARGET_LEN, lm_features,
                                      prefix_lm_features, random_spans_noise_mask, seq2seq_features,
                                      span_corruption, span_corruption_features, span_corruption_lengths)
from peft_jax.data.sources import (BadEncodingError, DataError, EmptySplitError, JsonLinesSource,
                                   MalformedRecordError, MissingDataError, MissingDependencyError,
                                   MissingFieldError, RecordFileSource, TextLinesSource, gem_wikilingua, mc4,
                                   tatoeba, text_lines, tfds_mc4, tfds_text, tfds_wikilingua, tfds_wikipedia,
                                   udhr, write_records, xlsum, xlsum_source)
from peft_jax.data.synthetic import World
from peft_jax.data.tokenizers import Tokenizer, TokenizerFileError, load_tokenizer, train_sentencepiece

__all__ = [
    "BadEncodingError", "DataError", "EmptySplitError", "JsonLinesSource", "MalformedRecordError",
    "MissingDataError", "MissingDependencyError", "MissingFieldError", "Packing", "RecordFileSource",
    "TextLinesSource", "Tokenizer", "TokenizerFileError", "World", "XLSUM_MAX_INPUT_LEN",
    "XLSUM_MAX_TARGET_LEN", "gem_wikilingua", "lm_features", "load_state", "load_tokenizer", "make_dataset",
    "make_iterator", "mc4", "prefix_lm_features", "random_spans_noise_mask", "save_state", "seq2seq_features",
    "span_corruption", "span_corruption_features", "span_corruption_lengths", "tatoeba", "text_lines",
    "tfds_mc4", "tfds_text", "tfds_wikilingua", "tfds_wikipedia", "train_sentencepiece", "udhr", "with_rng",
    "write_records", "xlsum", "xlsum_source",
]
