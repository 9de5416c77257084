"""Data for language and task arithmetic: sources, tokenizers, features, pipelines, a synthetic world.

* ``sources``: XL-Sum, WikiLingua (GEM), mC4, Tatoeba, UDHR and TFDS readers, plus
  random-access sources for pipelines; clear errors for missing or malformed data.
* ``language_text``: a language module's text, kept to its script (``script_filter``) and free of
  XL-Sum's evaluation data (``decontaminate``), with a report of what was dropped.
* ``tokenizers``: SentencePiece / Hugging Face tokenizers with T5 sentinels; training.
* ``preprocess``: t5x features (encoder-decoder, causal and prefix LM), span corruption.
* ``pipeline``: deterministic, sharded, checkpointable grain iterators, optional packing.
* ``synthetic``: the embedded multilingual world the README's main command runs on.
"""

import importlib

_SUBMODULES = ("decontaminate", "language_text", "pipeline", "preprocess", "script_filter", "sources", "synthetic",
               "tokenizers")

# Public name -> the submodule that defines it. Loaded on first use, so that code needing one piece
# (the models need `preprocess`) does not import grain, SentencePiece and every source reader.
_EXPORTS = {
    **dict.fromkeys(("Decontaminator", "is_bbc_url"), "decontaminate"),
    **dict.fromkeys(("NoUnlabeledTextError", "prepare_language_text", "require_unlabeled_text"), "language_text"),
    **dict.fromkeys(("ScriptFilter", "han_variant", "script_share"), "script_filter"),
    **dict.fromkeys(("Packing", "load_state", "make_dataset", "make_iterator", "save_state", "with_rng"), "pipeline"),
    **dict.fromkeys(("XLSUM_MAX_INPUT_LEN", "XLSUM_MAX_TARGET_LEN", "lm_features", "prefix_lm_features",
                     "random_spans_noise_mask", "seq2seq_features", "span_corruption", "span_corruption_features",
                     "span_corruption_lengths"), "preprocess"),
    **dict.fromkeys(("BadEncodingError", "DataError", "EmptySplitError", "JsonLinesSource", "MalformedRecordError",
                     "MissingDataError", "MissingDependencyError", "MissingFieldError", "RecordFileSource",
                     "TextLinesSource", "gem_wikilingua", "mc4", "tatoeba", "text_lines", "tfds_mc4", "tfds_text",
                     "tfds_wikilingua", "tfds_wikipedia", "udhr", "write_records", "xlsum", "xlsum_source"),
                    "sources"),
    **dict.fromkeys(("World",), "synthetic"),
    **dict.fromkeys(("Tokenizer", "TokenizerFileError", "load_tokenizer", "train_sentencepiece"), "tokenizers"),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"peft_jax.data.{name}")
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"peft_jax.data.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'peft_jax.data' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS) | set(_SUBMODULES))
