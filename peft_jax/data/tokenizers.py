"""Tokenizers: SentencePiece model files and Hugging Face tokenizer directories, one interface.

Special ids are always read from the model, never assumed. Conventions follow T5/mT5:

* ``sentinel_id(i)`` is the id of ``<extra_id_i>`` when the model has such pieces;
  otherwise ``extra_ids`` ids are appended after the model's vocabulary (as mT5 does
  with its 250k SentencePiece model) and ``sentinel_id(i) = vocab_size - 1 - i``.
* A model without a pad piece (LLaMA/Mistral-style files: ``unk=0, bos=1, eos=2``)
  pads with its ``unk`` id, so padding is id 0 as in T5 (and ``eos`` when there is no
  ``unk`` either). Byte-fallback models never produce ``unk`` for real text, so the
  choice is unambiguous there; ``load_tokenizer(..., pad_id=...)`` overrides it.
* ``encode`` never adds BOS/EOS; ``decode`` stops at the first EOS and drops padding.
"""

from __future__ import annotations

import abc
import io
import os
import pathlib
from collections.abc import Iterable, Sequence

import sentencepiece as spm
from etils import epath

from peft_jax import extras, fileio

SENTINEL_FORMAT = "<extra_id_{}>"


class TokenizerFileError(ValueError):
    """A path that is not a readable SentencePiece model or Hugging Face tokenizer."""


class TextInputError(ValueError):
    """Text a tokenizer cannot encode: not a string, or not valid Unicode (a lone surrogate)."""


def checked_text(text) -> str:
    """`text` if it is a str of valid Unicode; otherwise a `TextInputError` naming the problem and where.

    A lone surrogate (e.g. from JSON ``"\\ud800"`` or bytes decoded with ``surrogateescape``) has no UTF-8
    form, so neither SentencePiece nor a Hugging Face tokenizer can read it.
    """
    if not isinstance(text, str):
        raise TextInputError(f"tokenizers encode str, got {type(text).__name__}: {str(text)[:60]!r}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        char = text[err.start]
        raise TextInputError(f"text holds a lone surrogate U+{ord(char):04X} at character {err.start} (after "
                             f"{text[max(0, err.start - 30):err.start]!r}): not valid Unicode; repair the source "
                             "text (e.g. decode it with errors='replace')") from None
    return text


class Tokenizer(abc.ABC):
    """Text <-> ids with the special ids and T5 sentinels a model needs."""

    vocab_size: int
    pad_id: int
    eos_id: int
    bos_id: int | None
    unk_id: int | None
    base_vocab_size: int  # ids of the underlying model; sentinels may follow
    extra_ids: int

    @abc.abstractmethod
    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` without BOS or EOS (`TextInputError` for text that is not valid Unicode)."""

    @abc.abstractmethod
    def _decode_base(self, ids: Sequence[int]) -> str:
        """Text of ids that all belong to the underlying model."""

    @abc.abstractmethod
    def _base_piece(self, token_id: int) -> str:
        """Piece string of an id of the underlying model."""

    @abc.abstractmethod
    def _find_piece(self, piece: str) -> int | None:
        """Id of ``piece`` if the underlying model has it."""

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids`` up to the first EOS; padding is dropped, appended sentinels shown as pieces."""
        ids = [int(i) for i in ids]
        if self.eos_id in ids:
            ids = ids[: ids.index(self.eos_id)]
        ids = [i for i in ids if i != self.pad_id]
        pieces, run = [], []
        for i in ids:
            self._check_id(i)
            if i < self.base_vocab_size:
                run.append(i)
                continue
            if run:  # flush the ordinary ids decoded so far
                pieces.append(self._decode_base(run))
                run = []
            pieces.append(self.piece(i))
        if run:
            pieces.append(self._decode_base(run))
        return "".join(pieces)

    def _check_id(self, token_id: int) -> None:
        """Rejects ids outside the vocabulary (appended sentinels included)."""
        if not 0 <= token_id < self.vocab_size:
            raise ValueError(f"token id {token_id} out of range [0, {self.vocab_size})")

    def piece(self, token_id: int) -> str:
        """The piece string of ``token_id`` (``<extra_id_i>`` for appended sentinels)."""
        self._check_id(int(token_id))
        if token_id >= self.base_vocab_size:
            return SENTINEL_FORMAT.format(self.vocab_size - 1 - int(token_id))
        return self._base_piece(int(token_id))

    def num_sentinels(self) -> int:
        """How many sentinels exist: ``<extra_id_i>`` pieces of the model, else ``extra_ids``."""
        count = 0
        while self._find_piece(SENTINEL_FORMAT.format(count)) is not None:
            count += 1
        return count if count else self.extra_ids

    def sentinel_id(self, i: int) -> int:
        """Id of sentinel ``<extra_id_i>`` (T5 convention, see module docstring)."""
        found = self._find_piece(SENTINEL_FORMAT.format(i))
        if found is not None:
            return found
        if not 0 <= i < self.extra_ids:
            raise ValueError(f"sentinel {i} does not exist: the model has no {SENTINEL_FORMAT.format(i)} "
                             f"piece and extra_ids={self.extra_ids}; load it with extra_ids > {i}")
        return self.vocab_size - 1 - i

    def sentinel_ids(self, n: int | None = None) -> list[int]:
        """Ids of sentinels 0..n-1 (all of them by default), in T5 order."""
        return [self.sentinel_id(i) for i in range(self.num_sentinels() if n is None else n)]


def _pad_fallback(pad: int | None, unk: int | None, eos: int) -> int:
    """The documented pad choice: the model's pad, else unk, else eos."""
    for candidate in (pad, unk):
        if candidate is not None and candidate >= 0:
            return candidate
    return eos


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece model (``.model`` file or serialized proto) with optional appended extra ids."""

    def __init__(self, processor: spm.SentencePieceProcessor, extra_ids: int = 0,
                 pad_id: int | None = None, name: str = "<proto>"):
        if extra_ids < 0:
            raise ValueError(f"extra_ids must be >= 0, got {extra_ids}")
        self.sp, self.name = processor, name
        self.base_vocab_size = processor.get_piece_size()
        self.extra_ids = extra_ids
        self.vocab_size = self.base_vocab_size + extra_ids
        if processor.eos_id() < 0:
            raise TokenizerFileError(f"{name}: the SentencePiece model has no EOS piece (eos_id=-1)")
        self.eos_id = processor.eos_id()
        self.bos_id = processor.bos_id() if processor.bos_id() >= 0 else None
        self.unk_id = processor.unk_id() if processor.unk_id() >= 0 else None
        self.pad_id = pad_id if pad_id is not None else _pad_fallback(processor.pad_id(), self.unk_id, self.eos_id)

    def encode(self, text: str) -> list[int]:
        return list(self.sp.encode(checked_text(text), out_type=int))

    def _decode_base(self, ids: Sequence[int]) -> str:
        return self.sp.decode(list(ids))

    def _base_piece(self, token_id: int) -> str:
        return self.sp.id_to_piece(token_id)

    def _find_piece(self, piece: str) -> int | None:
        token_id = self.sp.piece_to_id(piece)
        # piece_to_id answers unk for unknown pieces; confirm by reading the piece back.
        return token_id if self.sp.id_to_piece(token_id) == piece else None


class HuggingFaceTokenizer(Tokenizer):
    """A Hugging Face tokenizer directory (``tokenizer.json`` / ``tokenizer_config.json``)."""

    def __init__(self, tokenizer, extra_ids: int = 0, pad_id: int | None = None, name: str = ""):
        if extra_ids < 0:
            raise ValueError(f"extra_ids must be >= 0, got {extra_ids}")
        self.tok, self.name = tokenizer, name
        self.base_vocab_size = len(tokenizer)
        self.extra_ids = extra_ids
        self.vocab_size = self.base_vocab_size + extra_ids
        if tokenizer.eos_token_id is None:
            raise TokenizerFileError(f"{name}: the tokenizer defines no EOS token")
        self.eos_id = int(tokenizer.eos_token_id)
        self.bos_id = tokenizer.bos_token_id
        self.unk_id = tokenizer.unk_token_id
        self.pad_id = pad_id if pad_id is not None else _pad_fallback(tokenizer.pad_token_id, self.unk_id,
                                                                     self.eos_id)

    def encode(self, text: str) -> list[int]:
        return list(self.tok.encode(checked_text(text), add_special_tokens=False))

    def _decode_base(self, ids: Sequence[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def _base_piece(self, token_id: int) -> str:
        return self.tok.convert_ids_to_tokens(token_id)

    def _find_piece(self, piece: str) -> int | None:
        token_id = self.tok.convert_tokens_to_ids(piece)
        if token_id is None or self.tok.convert_ids_to_tokens(token_id) != piece:
            return None
        return int(token_id)


def _load_sentencepiece(path: pathlib.Path, extra_ids: int, pad_id: int | None) -> SentencePieceTokenizer:
    """Loads a ``.model`` file; anything that is not a SentencePiece model is a clear error."""
    processor = spm.SentencePieceProcessor()
    try:
        processor.Load(model_file=str(path))
    except (RuntimeError, OSError) as err:
        raise TokenizerFileError(f"{path}: not a SentencePiece model file ({err})") from None
    return SentencePieceTokenizer(processor, extra_ids, pad_id, str(path))


def _load_huggingface(path: pathlib.Path, extra_ids: int, pad_id: int | None) -> HuggingFaceTokenizer:
    """Loads a tokenizer directory offline with ``transformers``."""
    transformers = extras.require("transformers", "loading a Hugging Face tokenizer directory")
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, TypeError) as err:
        raise TokenizerFileError(f"{path}: not a loadable Hugging Face tokenizer directory ({err})") from None
    return HuggingFaceTokenizer(tokenizer, extra_ids, pad_id, str(path))


def load_tokenizer(path: str | os.PathLike, extra_ids: int = 0, *, pad_id: int | None = None) -> Tokenizer:
    """Loads a SentencePiece ``.model`` file or a Hugging Face tokenizer directory.

    Args:
      path: the model file, or a directory holding ``tokenizer.json``/``tokenizer_config.json``
        (a directory holding only ``spiece.model``/``tokenizer.model`` loads that file).
      extra_ids: sentinel ids to append after the vocabulary when the model has no
        ``<extra_id_i>`` pieces (100 for the mT5 and T5 vocabularies).
      pad_id: overrides the pad id (by default: the model's pad, else unk, else eos).

    A remote ``path`` (``gs://...``) is read through a local copy (SentencePiece and transformers read
    local files only); the tokenizer keeps the remote name.

    Raises:
      FileNotFoundError: ``path`` does not exist.
      TokenizerFileError: the file is not a SentencePiece model / loadable tokenizer.
    """
    if fileio.is_remote(path):
        return _load_remote(os.fspath(path), extra_ids, pad_id)
    path = pathlib.Path(path)
    if not path.exists():
        raise _not_found(path)
    if path.is_dir():
        hf_files = [n for n in ("tokenizer.json", "tokenizer_config.json") if (path / n).is_file()]
        sp_files = [path / n for n in ("spiece.model", "tokenizer.model", "sentencepiece.model")
                    if (path / n).is_file()]
        if not hf_files and sp_files:
            return _load_sentencepiece(sp_files[0], extra_ids, pad_id)
        if not hf_files:
            raise TokenizerFileError(f"{path}: directory has neither tokenizer.json/tokenizer_config.json "
                                     f"nor a SentencePiece model (spiece.model, tokenizer.model)")
        return _load_huggingface(path, extra_ids, pad_id)
    return _load_sentencepiece(path, extra_ids, pad_id)


def _not_found(path) -> FileNotFoundError:
    return FileNotFoundError(f"tokenizer {str(path)!r} not found (expected a SentencePiece .model file "
                             f"or a Hugging Face tokenizer directory)")


def _load_remote(path: str, extra_ids: int, pad_id: int | None) -> Tokenizer:
    """`load_tokenizer` of a remote file or directory, through a temporary local copy."""
    if not epath.Path(path).exists():
        raise _not_found(path)
    with fileio.local_path(path) as local:
        try:
            tok = load_tokenizer(local, extra_ids, pad_id=pad_id)
        except TokenizerFileError as err:
            raise TokenizerFileError(str(err).replace(local, path)) from None
    tok.name = path
    return tok


def train_sentencepiece(texts: Iterable[str], output_prefix: str | os.PathLike, vocab_size: int,
                        model_type: str = "unigram", num_sentinels: int = 100, *,
                        character_coverage: float = 1.0, byte_fallback: bool = True,
                        normalization: str = "nmt_nfkc", max_sentence_length: int = 16384,
                        input_sentence_size: int = 1_000_000, seed: int = 0) -> pathlib.Path:
    """Trains a SentencePiece model with T5 ids and writes ``<output_prefix>.model``.

    The model has pad=0, eos=1, unk=2, no BOS, ``<extra_id_0..num_sentinels-1>`` as
    user-defined pieces (ids 3..) and, by default, byte fallback so no text maps to
    ``unk``. Training uses one thread and a fixed seed, so the same texts give the
    same model bytes. ``vocab_size`` is a soft limit: a small corpus gets fewer pieces.
    ``normalization`` is SentencePiece's rule: ``nmt_nfkc`` (T5/mT5's) maps e.g. a
    narrow no-break space to a space; ``identity`` makes every text round-trip exactly.

    Returns:
      The path of the written ``.model`` file (``output_prefix`` may be remote, ``gs://...``).
    """
    if model_type not in ("unigram", "bpe", "char", "word"):
        raise ValueError(f"model_type must be unigram, bpe, char or word, got {model_type!r}")
    reserved = 3 + num_sentinels + (256 if byte_fallback else 0)
    if vocab_size <= reserved:
        raise ValueError(f"vocab_size={vocab_size} leaves no room for pieces: special ids, "
                         f"{num_sentinels} sentinels and byte fallback take {reserved}")
    model = io.BytesIO()
    spm.set_random_generator_seed(seed)
    spm.SentencePieceTrainer.train(
        sentence_iterator=(t for t in texts if t and t.strip()), model_writer=model,
        vocab_size=vocab_size, model_type=model_type, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        user_defined_symbols=[SENTINEL_FORMAT.format(i) for i in range(num_sentinels)],
        byte_fallback=byte_fallback, character_coverage=character_coverage, normalization_rule_name=normalization,
        max_sentence_length=max_sentence_length, input_sentence_size=input_sentence_size,
        shuffle_input_sentence=False, hard_vocab_limit=False, num_threads=1, minloglevel=2)
    path = epath.Path(f"{os.fspath(output_prefix)}.model")
    fileio.write_bytes(path, model.getvalue())
    return path
