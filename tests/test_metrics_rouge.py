"""Invariants of peft_jax.metrics.rouge: rouge_score parity, the multilingual protocol, errors."""

import json
import warnings

import pytest
import Stemmer
from rouge_score import rouge_scorer

from peft_jax import languages
from peft_jax.metrics import rouge
# The package re-exports the function `rouge`, which shadows the submodule attribute,
# so the submodule's names are imported from it directly.
from peft_jax.metrics.rouge import MultilingualTokenizer, SentencePieceTokenizer, segment_by_script

import testdata

DATA = testdata.DATA
SPM_MODEL = DATA / "tokenizers" / "mistral_v3_bytefallback_32k.model"
TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


def _xlsum(name, split="test"):
    """(titles, summaries) of a real XL-Sum split."""
    lines = (DATA / "xlsum" / f"{name}_{split}.jsonl").read_text("utf-8").splitlines()
    rows = [json.loads(line) for line in lines if line.strip()]
    return [r["title"] for r in rows], [r["summary"] for r in rows]


def _f1(precision, recall):
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def test_english_default_rouge_equals_rouge_score_exactly():
    titles, summaries = [], []
    for split in ("train", "val", "test"):
        t, s = _xlsum("english", split)
        titles += t
        summaries += s
    scorer = rouge_scorer.RougeScorer(list(TYPES), use_stemmer=True)
    expected = {k: [] for k in TYPES}
    for title, summary in zip(titles, summaries):
        result = scorer.score(summary, title)
        for k in TYPES:
            expected[k].append(result[k].fmeasure)
    got = rouge(titles, summaries, tokenization="default", per_example=True)
    assert got["per_example"] == expected
    for k in TYPES:
        assert got[k] == sum(expected[k]) / len(expected[k])
        assert 0.0 < got[k] < 1.0


@pytest.mark.parametrize("lang", [lang.name for lang in languages.xlsum_languages()])
def test_multilingual_rouge_is_sensible_on_every_xlsum_language(lang):
    titles, summaries = _xlsum(lang)
    identity = rouge(summaries, summaries, lang=lang)
    assert all(identity[k] == pytest.approx(1.0) for k in TYPES)
    paired = rouge(titles, summaries, lang=lang, per_example=True)
    inside = [0.0 < f < 1.0 for f in paired["per_example"]["rouge1"]]
    assert sum(inside) >= len(inside) - 1, paired["per_example"]["rouge1"]
    shuffled = rouge(titles, summaries[1:] + summaries[:1], lang=lang)
    assert shuffled["rouge1"] < paired["rouge1"]
    assert shuffled["rougeL"] < paired["rougeL"]


def _check_hand_scores(lang, reference, prediction, ref_tokens, pred_tokens, expected):
    """Asserts the hand-listed tokens and hand-computed F1 values (rouge1, rouge2, rougeL)."""
    tokenizer = MultilingualTokenizer(languages.resolve(lang))
    assert tokenizer.tokenize(reference) == ref_tokens
    assert tokenizer.tokenize(prediction) == pred_tokens
    got = rouge([prediction], [reference], lang=lang)
    for key, value in zip(("rouge1", "rouge2", "rougeL"), expected):
        assert got[key] == pytest.approx(value, abs=1e-12), key


def test_chinese_hand_worked_scores():
    # rouge1: 3 shared of 3 predicted / 4 reference; rouge2: {我喜欢} of 2 / 3; LCS = 3.
    _check_hand_scores("zh", "我喜欢吃苹果。", "我喜欢苹果！",
                       ["我", "喜欢", "吃", "苹果"], ["我", "喜欢", "苹果"],
                       (_f1(3 / 3, 3 / 4), _f1(1 / 2, 1 / 3), _f1(3 / 3, 3 / 4)))


def test_japanese_hand_worked_scores():
    # 私/は/学生/です vs 私/は/先生/です: 3 of 4 unigrams, 1 of 3 bigrams (私は), LCS 3.
    _check_hand_scores("ja", "私は学生です。", "私は先生です",
                       ["私", "は", "学生", "です"], ["私", "は", "先生", "です"],
                       (_f1(3 / 4, 3 / 4), _f1(1 / 3, 1 / 3), _f1(3 / 4, 3 / 4)))


def test_thai_hand_worked_scores():
    # ฉัน/ชอบ/แมว vs ฉัน/ชอบ/หมา: 2 of 3 unigrams, 1 of 2 bigrams (ฉันชอบ), LCS 2.
    _check_hand_scores("th", "ฉันชอบแมว", "ฉันชอบหมา",
                       ["ฉัน", "ชอบ", "แมว"], ["ฉัน", "ชอบ", "หมา"],
                       (_f1(2 / 3, 2 / 3), _f1(1 / 2, 1 / 2), _f1(2 / 3, 2 / 3)))


def test_hindi_hand_worked_scores():
    # All words have <= 3 code points, so the Hindi Snowball stemmer leaves them alone;
    # the danda is punctuation. 4 of 5 unigrams, 2 of 4 bigrams (मैं घर, रहा हूँ), LCS 4.
    _check_hand_scores("hi", "मैं घर जा रहा हूँ।", "मैं घर आ रहा हूँ",
                       ["मैं", "घर", "जा", "रहा", "हूँ"], ["मैं", "घर", "आ", "रहा", "हूँ"],
                       (_f1(4 / 5, 4 / 5), _f1(2 / 4, 2 / 4), _f1(4 / 5, 4 / 5)))


def test_arabic_hand_worked_scores():
    # Short words are not stemmed; the Arabic comma and question mark are punctuation.
    # unigrams: هي في بيت shared -> P 3/3, R 3/5; bigrams: في بيت -> P 1/2, R 1/4;
    # LCS(هو في بيت لا هي, هي في بيت) = في بيت = 2 -> P 2/3, R 2/5.
    _check_hand_scores("ar", "هو في بيت، لا هي.", "هي في بيت؟",
                       ["هو", "في", "بيت", "لا", "هي"], ["هي", "في", "بيت"],
                       (_f1(3 / 3, 3 / 5), _f1(1 / 2, 1 / 4), _f1(2 / 3, 2 / 5)))


def test_burmese_hand_worked_syllable_scores():
    # Syllables: ကျွန်|တော်|ထ|မင်း|စား|တယ် vs ကျွန်|တော်|ရေ|သောက်|တယ် (asat-killed
    # consonants and medials stay in their syllable). unigrams 3: P 3/5 R 3/6;
    # bigrams (ကျွန် တော်): P 1/4 R 1/5; LCS ကျွန် တော် တယ် = 3.
    _check_hand_scores("my", "ကျွန်တော် ထမင်း စားတယ်။", "ကျွန်တော် ရေ သောက်တယ်",
                       ["ကျွန်", "တော်", "ထ", "မင်း", "စား", "တယ်"],
                       ["ကျွန်", "တော်", "ရေ", "သောက်", "တယ်"],
                       (_f1(3 / 5, 3 / 6), _f1(1 / 4, 1 / 5), _f1(3 / 5, 3 / 6)))


def test_tokens_of_three_characters_or_fewer_are_not_stemmed():
    english = MultilingualTokenizer(languages.resolve("en"))
    assert Stemmer.Stemmer("english").stemWord("its") == "it"  # the rule matters here
    assert english.tokenize("Its runners running") == ["its", "runner", "run"]
    russian = MultilingualTokenizer(languages.resolve("ru"))
    assert russian.tokenize("Народа, нет!") == ["народ", "нет"]


def test_punctuation_and_symbols_are_removed_in_every_script():
    tokenizer = MultilingualTokenizer(languages.resolve("bn"))
    assert tokenizer.tokenize("«বাংলা» — ভাষা! 50% $") == ["বাংলা", "ভাষা", "50"]


def test_rougelsum_splits_sentences_at_newlines():
    reference = "the cat sat\nthe dog ran"
    one_line = rouge(["the dog ran the cat sat"], [reference], lang="en")
    two_lines = rouge(["the dog ran\nthe cat sat"], [reference], lang="en")
    assert two_lines["rougeLsum"] == pytest.approx(1.0)
    assert one_line["rougeLsum"] == pytest.approx(1.0)  # union LCS over reference sentences
    assert one_line["rougeL"] < 1.0


def test_unknown_language_fallback_warns_and_segments_by_script():
    with pytest.warns(UserWarning, match="fallback"):
        scores = rouge(["我喜欢苹果"], ["我喜欢吃苹果"], lang=None)
    # Han characters one per token: 5 of 5 predicted, 5 of 6 reference.
    assert scores["rouge1"] == pytest.approx(_f1(5 / 5, 5 / 6))
    tokens = segment_by_script("abc日本ไทยภาษา")
    assert tokens[:3] == ["abc", "日", "本"] and "".join(tokens[3:]) == "ไทยภาษา"


def test_unknown_language_code_raises_with_suggestions():
    with pytest.raises(languages.UnknownLanguageError, match="hindi"):
        rouge(["a"], ["a"], lang="hindii")


def test_registered_language_without_stemmer_scores_by_whitespace():
    made_up = languages.Language(name="testlang_rouge_latn", iso1=None, iso3="qrl", bcp47="qrl",
                                 family="Synthetic", genus="Synthetic", script="Latn")
    languages.register(made_up)
    scores = rouge(["kala moru tesi"], ["kala moru pini tesi"], lang="qrl")
    assert scores["rouge1"] == pytest.approx(_f1(1.0, 3 / 4))


def test_default_tokenization_warns_that_non_latin_scores_zero():
    titles, summaries = _xlsum("bengali")
    with pytest.warns(UserWarning, match="multilingual"):
        scores = rouge(titles, summaries, tokenization="default")
    assert scores["rouge1"] < 0.05
    assert rouge(titles, summaries, lang="bn")["rouge1"] > 0.1


@pytest.mark.parametrize("lang", ["bengali", "chinese_simplified", "amharic", "thai"])
def test_sentencepiece_rouge_is_nonzero_on_non_latin_scripts(lang):
    titles, summaries = _xlsum(lang)
    identity = rouge(summaries, summaries, tokenization="sentencepiece", spm_path=SPM_MODEL)
    assert identity["rouge1"] == pytest.approx(1.0)
    scores = rouge(titles, summaries, tokenization="sentencepiece", spm_path=str(SPM_MODEL))
    shuffled = rouge(titles, summaries[1:] + summaries[:1], tokenization="sentencepiece",
                     spm_path=SPM_MODEL)
    assert 0.05 < scores["rouge1"] < 1.0
    assert shuffled["rouge1"] < scores["rouge1"]


def test_sentencepiece_tokens_are_the_model_pieces():
    import sentencepiece
    processor = sentencepiece.SentencePieceProcessor(model_file=str(SPM_MODEL))
    text = "বাংলা ভাষা"
    assert SentencePieceTokenizer(SPM_MODEL).tokenize(text) == processor.encode(
        text, out_type=str)


def test_empty_predictions_raise():
    with pytest.raises(ValueError, match="empty"):
        rouge([], [])


def test_length_mismatch_names_both_lengths():
    with pytest.raises(ValueError, match="2 predictions vs 1 references"):
        rouge(["a", "b"], ["a"])


def test_unknown_tokenization_raises():
    with pytest.raises(ValueError, match="unknown tokenization 'bpe'"):
        rouge(["a"], ["a"], tokenization="bpe")


def test_sentencepiece_without_model_raises():
    with pytest.raises(ValueError, match="spm_path"):
        rouge(["a"], ["a"], tokenization="sentencepiece")
    with pytest.raises(FileNotFoundError, match="missing.model"):
        rouge(["a"], ["a"], tokenization="sentencepiece", spm_path="/nonexistent/missing.model")


def test_bare_string_and_non_string_inputs_raise():
    with pytest.raises(ValueError, match="not a string"):
        rouge("abc", "abc")
    with pytest.raises(ValueError, match="example 1"):
        rouge(["a", None], ["a", "b"])


def test_scores_without_warnings_for_supported_languages():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rouge(["私は学生です"], ["私は先生です"], lang="ja")
        rouge(["ฉันชอบแมว"], ["ฉันชอบหมา"], lang="th")


def test_zero_width_joiners_do_not_split_words():
    # Persian "mi-khaham" is written with a zero-width non-joiner inside the word.
    tokenizer = MultilingualTokenizer(None)
    assert tokenizer.tokenize("می\u200cخواهم") == ["میخواهم"]
