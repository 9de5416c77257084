"""Word segmenters for scripts written without spaces, loaded once on first use.

jieba (Chinese), MeCab through fugashi on the bundled UniDic-lite dictionary (Japanese) and
PyThaiNLP (Thai) come with the ``multilingual`` extra; a missing one stops with the command
that installs it. Both ROUGE tokenizations (``rouge.MultilingualTokenizer`` and
``xlsum.XlsumTokenizer``) take them from here.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from peft_jax import extras


@functools.cache
def jieba():
    """The jieba module, its prefix dictionary built once."""
    module = extras.require("jieba", "Chinese ROUGE segmentation")
    module.setLogLevel(60)  # jieba logs its dictionary loading at INFO
    module.initialize()
    return module


@functools.cache
def mecab():
    """A MeCab (fugashi) tagger in word-splitting mode on UniDic-lite: no dictionary download."""
    fugashi = extras.require("fugashi", "Japanese ROUGE segmentation")
    unidic_lite = extras.require("unidic_lite", "Japanese ROUGE segmentation")
    return fugashi.Tagger(f'-O wakati -b 50000 -d "{unidic_lite.DICDIR}"')


def segment_japanese(text: str) -> list[str]:
    """Japanese words by MeCab with UniDic-lite (XL-Sum uses MeCab with UniDic)."""
    return mecab().parse(text).split()


def thai_word_tokenize() -> Callable[..., list[str]]:
    """PyThaiNLP's ``word_tokenize`` (its ``newmm`` engine ships its dictionary)."""
    return extras.require("pythainlp.tokenize", "Thai ROUGE segmentation").word_tokenize
