"""Tokenizers: ids come from the model, sentinels follow T5, all XL-Sum samples round-trip."""

import re
import shutil

import pytest
import sentencepiece as spm

from peft_jax import languages
from peft_jax.data import sources, tokenizers

import testdata

DATA = testdata.DATA
MULTILINGUAL = DATA / "tokenizers" / "mistral_v3_bytefallback_32k.model"
T5_ENGLISH = DATA / "tokenizers" / "t5_english_32k.model"


@pytest.fixture(scope="module")
def multilingual():
    return tokenizers.load_tokenizer(MULTILINGUAL)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    texts = []
    for code in ("fra", "rus", "ell", "kat"):
        texts += list(sources.tatoeba(DATA / "tatoeba", code))
    return texts, tokenizers.train_sentencepiece(texts, tmp_path_factory.mktemp("spm") / "m", 1500,
                                                 num_sentinels=10, normalization="identity")


def test_every_xlsum_language_round_trips_with_the_multilingual_model(multilingual):
    checked = 0
    for language in languages.XLSUM_NAMES:
        for split in ("train", "validation", "test"):
            for example in sources.xlsum(DATA / "xlsum", language, split):
                for field in ("title", "summary", "text"):
                    ids = multilingual.encode(example[field])
                    assert ids and multilingual.unk_id not in ids, (language, field)
                    assert multilingual.decode(ids) == example[field], (language, split, field)
                    checked += 1
    assert checked == 45 * 3 * 5 * 3


def test_special_ids_are_read_from_the_model_and_missing_pad_falls_back_to_unk(multilingual):
    reference = spm.SentencePieceProcessor(model_file=str(MULTILINGUAL))
    assert reference.pad_id() == -1  # the file has no pad piece
    assert (multilingual.eos_id, multilingual.bos_id, multilingual.unk_id) == (
        reference.eos_id(), reference.bos_id(), reference.unk_id())
    assert multilingual.pad_id == reference.unk_id()
    assert multilingual.vocab_size == reference.get_piece_size()
    assert tokenizers.load_tokenizer(MULTILINGUAL, pad_id=7).pad_id == 7


def test_encode_adds_neither_bos_nor_eos(multilingual):
    reference = spm.SentencePieceProcessor(model_file=str(MULTILINGUAL))
    assert multilingual.encode("Hello world") == reference.encode("Hello world")
    ids = multilingual.encode("Hello")
    assert multilingual.bos_id not in ids and multilingual.eos_id not in ids


def test_decode_stops_at_first_eos_and_drops_padding():
    t5 = tokenizers.load_tokenizer(T5_ENGLISH, extra_ids=100)
    ids = t5.encode("The cat sat.")
    assert t5.decode([t5.pad_id] + ids + [t5.eos_id] + t5.encode("junk") + [t5.pad_id]) == "The cat sat."


def test_t5_vocabulary_appends_sentinels_after_the_pieces_like_mt5():
    t5 = tokenizers.load_tokenizer(T5_ENGLISH, extra_ids=100)
    assert (t5.pad_id, t5.eos_id, t5.unk_id, t5.bos_id) == (0, 1, 2, None)
    assert t5.vocab_size == 32100
    assert t5.sentinel_id(0) == 32099 and t5.sentinel_id(99) == 32000
    assert t5.piece(32099) == "<extra_id_0>" and t5.piece(32000) == "<extra_id_99>"
    assert t5.decode(t5.encode("Hello") + [t5.sentinel_id(1)] + t5.encode("there")) == "Hello<extra_id_1>there"
    with pytest.raises(ValueError, match="sentinel 100 does not exist"):
        t5.sentinel_id(100)
    with pytest.raises(ValueError, match="sentinel 0 does not exist.*extra_ids=0"):
        tokenizers.load_tokenizer(T5_ENGLISH).sentinel_id(0)
    with pytest.raises(ValueError, match="out of range"):
        t5.piece(32100)


def test_huggingface_directory_agrees_with_the_sentencepiece_file(tmp_path):
    transformers = pytest.importorskip("transformers")
    shutil.copy(T5_ENGLISH, tmp_path / "spiece.model")
    transformers.T5Tokenizer.from_pretrained(str(tmp_path), extra_ids=100).save_pretrained(str(tmp_path / "hf"))
    hf = tokenizers.load_tokenizer(tmp_path / "hf")
    sp = tokenizers.load_tokenizer(T5_ENGLISH, extra_ids=100)
    text = "Work to repair a sea wall that collapsed during storms has been delayed."
    assert hf.encode(text) == sp.encode(text)
    assert (hf.pad_id, hf.eos_id, hf.unk_id, hf.vocab_size) == (sp.pad_id, sp.eos_id, sp.unk_id, sp.vocab_size)
    assert [hf.sentinel_id(i) for i in (0, 1, 99)] == [sp.sentinel_id(i) for i in (0, 1, 99)]
    assert hf.decode(hf.encode(text) + [hf.eos_id, 5]) == text
    # A directory holding only a SentencePiece file loads that file.
    assert tokenizers.load_tokenizer(tmp_path).encode(text) == sp.encode(text)


def test_file_that_is_not_a_sentencepiece_model_is_named(tmp_path):
    with pytest.raises(tokenizers.TokenizerFileError, match=r"README\.md: not a SentencePiece model"):
        tokenizers.load_tokenizer(DATA / "README.md")
    with pytest.raises(FileNotFoundError, match="nope.model"):
        tokenizers.load_tokenizer(tmp_path / "nope.model")
    with pytest.raises(tokenizers.TokenizerFileError, match="neither tokenizer.json"):
        tokenizers.load_tokenizer(tmp_path)


def test_trained_model_has_t5_ids_sentinel_pieces_and_byte_fallback(trained):
    texts, path = trained
    tok = tokenizers.load_tokenizer(path)
    assert (tok.pad_id, tok.eos_id, tok.unk_id, tok.bos_id) == (0, 1, 2, None)
    assert [tok.sentinel_id(i) for i in range(10)] == list(range(3, 13))
    assert tok.num_sentinels() == 10 and tok.piece(3) == "<extra_id_0>"
    with pytest.raises(ValueError, match="sentinel 10 does not exist"):
        tok.sentinel_id(10)
    unseen = "中文和日本語 text"  # scripts absent from the training text
    assert tok.unk_id not in tok.encode(unseen) and tok.decode(tok.encode(unseen)) == unseen
    assert all(tok.decode(tok.encode(t)) == t for t in texts)


def test_default_normalization_is_t5s_nfkc(tmp_path):
    path = tokenizers.train_sentencepiece(["Viens ici\u202f!", "bonjour"] * 50, tmp_path / "m", 400,
                                          num_sentinels=5)
    tok = tokenizers.load_tokenizer(path)
    assert tok.decode(tok.encode("Viens ici\u202f!")) == "Viens ici !"


def test_training_is_deterministic(trained, tmp_path):
    texts, path = trained
    again = tokenizers.train_sentencepiece(texts, tmp_path / "again", 1500, num_sentinels=10,
                                           normalization="identity")
    assert again.read_bytes() == path.read_bytes()


def test_training_rejects_a_vocabulary_too_small_for_the_reserved_pieces(tmp_path):
    with pytest.raises(ValueError, match="vocab_size=300 leaves no room"):
        tokenizers.train_sentencepiece(["a b c"], tmp_path / "m", 300, num_sentinels=100)


@pytest.mark.parametrize("text, where", [("abc \ud800 def", "U+D800 at character 4"),
                                         ("\udcff", "U+DCFF at character 0"),
                                         ("ok \U0001F600 then \udc80", "U+DC80 at character 10")])
def test_a_lone_surrogate_is_refused_naming_it_and_where(multilingual, text, where):
    """Not valid Unicode, so it has no UTF-8 form: a named error, not SentencePiece's pybind cast error."""
    with pytest.raises(tokenizers.TextInputError, match=re.escape(where)):
        multilingual.encode(text)
    with pytest.raises(tokenizers.TextInputError, match="got bytes"):
        multilingual.encode(text.encode("utf-8", "surrogatepass"))
    # A surrogate pair written as one astral character is valid text.
    assert multilingual.encode("ok \U0001F600") == multilingual.sp.encode("ok \U0001F600")
