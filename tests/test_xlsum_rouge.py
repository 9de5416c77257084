"""tokenization="xlsum" reproduces XL-Sum's official multilingual ROUGE scorer, quirks included.

The reference numbers (tests/data/rouge/xlsum_official_scores.json) come from the official scorer
rebuilt from its public source and run on title and lead predictions of the XL-Sum samples;
tests/data/rouge/README.md says how, and which NLTK data it ran without. Every literal token list
below is what that scorer returns for the same text.
"""

import importlib
import json

import nltk
import pytest

from peft_jax.metrics import bengali_rules, turkish_stemmer, xlsum, xlsum_stemmers

import testdata

# The package re-exports the function `rouge`, which shadows the submodule attribute.
rouge_module = importlib.import_module("peft_jax.metrics.rouge")
TOLERANCE = 0.05  # ROUGE F1 x100
# Without NLTK's data (as on CI) every first use warns; the test that needs the warning catches it.
pytestmark = pytest.mark.filterwarnings("ignore:NLTK's")


def _clear_caches():
    xlsum_stemmers.nltk_stop_words.cache_clear()
    xlsum._punkt.cache_clear()  # pylint: disable=protected-access
    rouge_module._xlsum_tokenizer.cache_clear()  # pylint: disable=protected-access


@pytest.fixture
def without_nltk_data(monkeypatch):
    """NLTK finds none of its data, as when the reference scores were made (and on CI)."""
    monkeypatch.setattr(nltk.data, "path", [])
    _clear_caches()
    yield
    _clear_caches()


def _tokens(language, text):
    return xlsum.XlsumTokenizer(language).tokenize(text)


def _articles(language):
    rows = []
    for split in ("train", "val", "test"):
        lines = testdata.path("xlsum", f"{language}_{split}.jsonl").read_text("utf-8").splitlines()
        rows += [json.loads(line) for line in lines if line.strip()]
    return rows


def test_xlsum_rouge_equals_the_official_scorer_on_all_45_languages(without_nltk_data):
    reference = json.loads(testdata.path("rouge", "xlsum_official_scores.json").read_text("utf-8"))
    assert len(reference["scores"]) == 45
    worst = 0.0
    for language, systems in reference["scores"].items():
        rows = _articles(language)
        summaries = [r["summary"] for r in rows]
        predictions = {"title": [r["title"] for r in rows],
                       "lead": [r["text"][:len(r["summary"])] for r in rows]}
        for system, texts in predictions.items():
            got = rouge_module.rouge(texts, summaries, lang=language, tokenization="xlsum")
            for rouge_type, expected in systems[system].items():
                difference = abs(100 * got[rouge_type] - expected)
                assert difference <= TOLERANCE, (language, system, rouge_type, 100 * got[rouge_type], expected)
                worst = max(worst, difference)
    # Measured: identical up to the reference file's 6 decimals.
    assert worst < 1e-5


def test_chinese_and_thai_keep_the_spaces_their_segmenters_return_as_tokens():
    assert _tokens("chinese_simplified", "中国 经济 增长") == ["中国", " ", "经济", " ", "增长"]
    assert _tokens("chinese_traditional", "中國 經濟") == ["中國", " ", "經濟"]
    assert _tokens("thai", "สวัสดี ครับ ผม") == ["สวัสดี", " ", "ครับ", " ", "ผม"]
    # so a space matches a space: two one-word texts share a unigram and a bigram.
    scores = rouge_module.rouge(["经济 增长"], ["中国 经济"], lang="zh", tokenization="xlsum")
    assert scores["rouge1"] == pytest.approx(2 / 3)
    assert _tokens("japanese", "日本語の文章です") == ["日本", "語", "の", "文章", "です"]


def test_the_fallback_splits_letters_from_digits_and_keeps_symbols_as_tokens():
    assert _tokens("marathi", "#5मोठ्या") == ["5", "मोठ्या"]
    assert _tokens("korean", "6일") == ["6", "일"]
    assert _tokens("english", "ak1000 £55m") == ["ak", "1000", "£", "55", "m"]
    assert _tokens("bengali", "২৬শে") == ["২৬", "শে"]  # native digits too
    assert _tokens("korean", "韓國語 텍스트abc") == ["韓", "國", "語", "텍스트abc"]  # one token per ideograph
    assert _tokens("persian", "دولت‌ها") == ["دولتها"]  # ZWNJ is a control character: dropped


def test_the_aggressive_split_follows_letter_number_and_symbol_runs():
    assert xlsum.aggressive_tokens("covid19 a²b ①2 ££") == ["covid", "19", "a", "²", "b", "①2", "£", "£"]
    # A combining mark right after a space keeps the space, escaped as OpenNMT writes it.
    assert xlsum.aggressive_tokens("a \u094bक") == ["a", "\uff050020\u094b", "क"]
    assert xlsum.basic_tokens("don't stop—ever (really)!") == ["don", "t", "stop", "ever", "really"]


def test_burmese_deletes_spaces_before_segmenting():
    assert _tokens("burmese", "BBC 2021 ကျွန်တော်ထမင်းစားတယ်") == [
        "b", "b", "c", "2", "0", "2", "1", "ကျွန်", "တော်", "ထ", "မင်း", "စား", "တယ်"]


def test_stemmers_are_the_official_ones_language_by_language():
    assert _tokens("english", "Running quickly, the governments") == ["run", "quick", "the", "govern"]
    # NLTK's Arabic stemmer, not Snowball's (which keeps the conjunction: "والمعلم").
    assert _tokens("arabic", "الحكومة قالت والمعلمون") == ["حكوم", "قال", "معلم"]
    assert _tokens("hindi", "लड़कियाँ खाएंगे") == ["लड़क", "खा"]
    assert _tokens("bengali", "ভাতের গাই আমি") == ["ভাত", "গাই", "আমি"]  # 3 characters: never stemmed
    assert _tokens("turkish", "kitaplarımızdan evlerdekiler çocuklarımızın") == ["kitap", "ev", "çocuk"]
    # No stemmer at all for these: and Serbian Cyrillic stays Cyrillic.
    assert _tokens("serbian_cyrillic", "Влада Србије је рекла") == ["влада", "србије", "је", "рекла"]
    assert _tokens("serbian_latin", "Vlada Srbije je rekla") == ["vlada", "srbije", "je", "rekla"]
    assert _tokens("indonesian", "pemerintahan mengatakan") == ["pemerintahan", "mengatakan"]
    assert _tokens("nepali", "सरकारले भनेको") == ["सरकारले", "भनेको"]
    assert _tokens("tamil", "அரசாங்கம் கூறியது") == ["அரசாங்கம்", "கூறியது"]
    assert _tokens("persian", "گفتند دولت") == ["گفتند", "دولت"]


def test_turkish_stemmer_matches_the_package_on_its_rules():
    stem = turkish_stemmer.TurkishStemmer()
    assert stem("kitabı") == "kitap"  # last-consonant rule b -> p
    assert stem("ağacı") == "ağaç"
    assert stem("gidecekmişsiniz") == "gidecek"
    assert stem("yapabileceklerimizden") == "yapabilecek"
    assert stem("okullardaki") == "okul"
    assert stem("açıklamasında") == "açıklama"
    assert stem("arabalarımız") == "araba"
    assert stem("araba") == "araba"  # a protected word
    assert stem("gözlükçülük") == "gözlükçülük"
    assert stem("istanbul") == "istanbul"
    assert stem("wifi") == "wifi"  # w is not a Turkish letter: never stemmed


def test_bengali_and_hindi_stemmers_use_the_published_data():
    assert bengali_rules.RULES == testdata.path("rouge", "bengali_rafikamal2014.rules").read_text("utf-8")
    stem = xlsum_stemmers.BengaliStemmer()
    assert [stem(w) for w in ("আমি", "গান", "গাই", "ভাতের")] == ["আমি", "গান", "গা", "ভাত"]
    published = json.loads(testdata.path("rouge", "hindi_suffixes.json").read_text("utf-8"))["suffixes"]
    assert {str(k): list(v) for k, v in xlsum_stemmers.HINDI_SUFFIXES.items()} == published
    assert xlsum_stemmers.hindi_stem("खाएंगे") == "खा"
    assert xlsum_stemmers.hindi_stem("घर") == "घर"


def test_nltk_stop_words_stay_unstemmed_when_the_corpus_is_there(monkeypatch):
    class Corpus:  # the interface of nltk.corpus.stopwords
        @staticmethod
        def words(language):
            return ["having", "does"] if language == "english" else []

    monkeypatch.setattr(xlsum_stemmers, "stopwords", Corpus)
    _clear_caches()
    try:
        assert _tokens("english", "having does quickly") == ["having", "does", "quick"]
    finally:
        _clear_caches()
    monkeypatch.undo()  # the real corpus again, now with nothing to read it from
    monkeypatch.setattr(nltk.data, "path", [])
    try:
        with pytest.warns(UserWarning, match="stop-word corpus is not installed"):
            assert _tokens("english", "having does quickly") == ["have", "doe", "quick"]
    finally:
        _clear_caches()


def test_rouge_lsum_ends_sentences_with_newlines_and_tokenizes_them_without_the_segmenter(without_nltk_data):
    english = rouge_module.rouge(["The dog ran. The cat sat."], ["The cat sat. The dog ran."],
                                 lang="en", tokenization="xlsum")
    assert english["rougeL"] == pytest.approx(0.5)
    assert english["rougeLsum"] == pytest.approx(1.0)  # summary-level LCS over the two sentences
    chinese = rouge_module.rouge(["中国经济增长。"], ["中国经济增长很快。"], lang="zh", tokenization="xlsum")
    assert chinese["rouge1"] == pytest.approx(6 / 7)
    assert chinese["rougeLsum"] == 0.0  # each sentence is one token: they differ
    assert xlsum.newline_sentences("  One. Two?  Three! ") == "One.\nTwo?\nThree!"


def test_every_table_can_name_its_scorer(monkeypatch):
    names = {t: rouge_module.scorer_name(t) for t in rouge_module.TOKENIZATIONS}
    assert len(set(names.values())) == len(names)
    assert "XL-Sum official" in names["xlsum"] and "not XL-Sum's official" in names["multilingual"]
    monkeypatch.setattr(nltk.data, "path", [])
    assert rouge_module.scorer_name("xlsum").endswith("without NLTK data stopwords and punkt_tab")
    with pytest.raises(rouge_module.RougeInputError, match="unknown tokenization 'xl-sum'"):
        rouge_module.scorer_name("xl-sum")
