"""A language module's unlabeled text: the per-language source table, the script filter, decontamination
against XL-Sum's evaluation data, and mC4 files read by the language stage (peft_jax.data.language_text)."""

import gzip
import importlib.util
import json
import re

import pytest

from peft_jax import data, languages
from peft_jax.data import decontaminate, language_text, script_filter
from peft_jax.pipeline import experiment

import testdata

NO_MC4 = {"kirundi", "oromo", "tigrinya", "pidgin"}


def _udhr_paragraphs(name):
    return re.findall(r"<para>(.*?)</para>", testdata.path("udhr", name).read_text("utf-8"))


def _xlsum(language, splits=("train", "val", "test")):
    return [json.loads(line) for split in splits
            for line in testdata.path("xlsum", f"{language}_{split}.jsonl").read_text("utf-8").splitlines()]


# The official Uzbek Latin alphabet (1995) for the Cyrillic one (1940).
_UZ_LATIN = dict(zip("абвгдежзийклмнопрстуфхцчшъьэюяўқғҳё",
                     ["a", "b", "v", "g", "d", "e", "j", "z", "i", "y", "k", "l", "m", "n", "o", "p", "r", "s", "t",
                      "u", "f", "x", "ts", "ch", "sh", "ʼ", "", "e", "yu", "ya", "oʻ", "q", "gʻ", "h", "yo"]))


def _uzbek_latin(text):
    out = []
    for char in text:
        latin = _UZ_LATIN.get(char.lower(), char)
        out.append(latin[:1].upper() + latin[1:] if char.isupper() else latin)
    return "".join(out)


# ------------------------------------------------------------------------------ the table
def test_unlabeled_table_gives_every_xlsum_language_an_mc4_code_or_no_data():
    entries = {lang.name: languages.unlabeled_source(lang) for lang in languages.xlsum_languages()}
    assert len(entries) == 45 and all(e is not None for e in entries.values())
    assert {name for name, e in entries.items() if not e.available} == NO_MC4
    assert all(not languages.has_unlabeled_text(name) and e.code is None for name, e in entries.items() if name in NO_MC4)
    assert all(e.script == e.language.script for e in entries.values())
    # Languages that share an mC4 code are told apart by their filter, never fed the other's text.
    assert [(entries[n].code, entries[n].script, entries[n].filter) for n in
            ("chinese_simplified", "chinese_traditional", "serbian_cyrillic", "serbian_latin", "uzbek")] == [
        ("zh", "Hans", "han_variant"), ("zh", "Hant", "han_variant"), ("sr", "Cyrl", "script"),
        ("sr", "Latn", "script"), ("uz", "Cyrl", "script")]
    assert data.sources.mc4_code("zh-Hant") == "zh" and data.sources.mc4_code("hebrew") == "iw"
    assert languages.unlabeled_source("german") is None and languages.has_unlabeled_text("german")


def test_languages_without_unlabeled_text_are_refused_unless_text_is_given():
    with pytest.raises(language_text.NoUnlabeledTextError, match=r"kirundi has no unlabeled text.*text_overrides"):
        language_text.require_unlabeled_text("rn")
    language_text.require_unlabeled_text("rn", given=True)
    language_text.require_unlabeled_text("swahili")
    with pytest.raises(data.MissingDataError, match="mC4 has no text in tigrinya"):
        experiment.text_path({"text_paths": "/mc4/c4-{mc4}.json.gz"}, "tigrinya")
    assert experiment.text_path({"text_paths": "/mc4/c4-{mc4}.json.gz"}, "serbian_latin") == "/mc4/c4-sr.json.gz"


# ------------------------------------------------------------------------------- scripts
def test_script_filter_keeps_each_serbian_script_of_the_udhr_and_drops_the_other():
    cyrillic, latin = _udhr_paragraphs("udhr_srp_cyrl.xml"), _udhr_paragraphs("udhr_srp_latn.xml")
    keep_cyrl = script_filter.ScriptFilter.for_language("serbian_cyrillic")
    keep_latn = script_filter.ScriptFilter.for_language("serbian_latin")
    assert (len(cyrillic), len(latin)) == (59, 59)
    assert [sum(map(f.keeps, texts)) for f in (keep_cyrl, keep_latn) for texts in (cyrillic, latin)] == [59, 0, 0, 59]


def test_han_variant_test_tells_xlsum_simplified_from_traditional_chinese():
    hans = script_filter.ScriptFilter.for_language("chinese_simplified")
    hant = script_filter.ScriptFilter.for_language("chinese_traditional")
    simplified, traditional = _xlsum("chinese_simplified"), _xlsum("chinese_traditional")
    for field in ("text", "summary"):
        assert [sum(f.keeps(r[field]) for r in rs) for f in (hans, hant) for rs in (simplified, traditional)] == [
            15, 0, 0, 15]
    # Tatoeba's Mandarin mixes both standards; 58 short sentences hold no distinguishing character.
    lines = testdata.path("tatoeba", "tatoeba.cmn-eng.cmn").read_text("utf-8").splitlines()
    assert (sum(map(hans.keeps, lines)), sum(map(hant.keeps, lines)), len(lines)) == (131, 211, 400)
    assert script_filter.han_variant("这是国家") == "Hans" and script_filter.han_variant("這是國家") == "Hant"
    assert script_filter.han_variant("中文") is None


def test_uzbek_keeps_cyrillic_xlsum_and_drops_its_latin_spelling():
    keep = script_filter.ScriptFilter.for_language("uzbek")
    summaries = [r["summary"] for r in _xlsum("uzbek")]
    latin = [_uzbek_latin(s) for s in summaries]
    assert latin[0] == "Isteʼdodli bastakor Sulton Ali Rahmatov Toshkentda tugʻilgan."
    assert (sum(map(keep.keeps, summaries)), sum(map(keep.keeps, latin)), len(summaries)) == (15, 0, 15)
    assert script_filter.script_share("Барча одамлар erkin", "Cyrl") == pytest.approx(12 / 17)


# ------------------------------------------------------------------------ decontamination
def test_bbc_domains_and_their_subdomains_are_recognised():
    bbc = ["https://www.bbc.com/uzbek/x", "http://bbc.co.uk/news", "https://news.BBC.co.uk./a", "www.bbc.com/a",
           "https://www.bbc.com:443/x"]
    other = ["https://notbbc.com/x", "https://bbc.co.uk.example.org/", "https://example.com/bbc.com", "", None,
             "https://bbci.co.uk/x"]
    assert [decontaminate.is_bbc_url(u) for u in bbc] == [True] * 5
    assert [decontaminate.is_bbc_url(u) for u in other] == [False] * 6


def test_sentences_are_compared_after_nfkc_casefold_and_whitespace_collapse():
    assert decontaminate.normalize("  Ｆｕｌｌ\u3000WIDTH\n\tStraße ") == "full width strasse"
    assert decontaminate.sentences("It costs 3.5 dollars at bbc.com! Next\nline 中文句子。第二句！") == [
        "it costs 3.5 dollars at bbc.com!", "next", "line 中文句子。", "第二句!"]
    clean = decontaminate.Decontaminator(["A reference sentence that is long enough to count. Too short."])
    assert clean.overlaps("Intro.  a REFERENCE sentence that is long  enough to count.")
    assert not clean.overlaps("Too short.") and not clean.overlaps("A reference sentence that is long enough")
    assert [lang.name for lang in decontaminate.reference_languages("zh")] == ["chinese_simplified",
                                                                               "chinese_traditional"]


# ---------------------------------------------------------------------------- the stage
def _mc4_file(path, records):
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps({"text": t, "timestamp": "2020-01-01T00:00:00Z", "url": u}) + "\n" for t, u in records)


def _serbian_mc4(tmp_path):
    """mC4-style Serbian records from real text: which of them each Serbian stage keeps is known."""
    cyrillic, latin = _udhr_paragraphs("udhr_srp_cyrl.xml"), _udhr_paragraphs("udhr_srp_latn.xml")
    test_article = _xlsum("serbian_cyrillic", ("test",))[0]["text"]
    val_summary = _xlsum("serbian_latin", ("val",))[1]["summary"]
    records = [(p, f"https://example.rs/c{i}") for i, p in enumerate(cyrillic[:6])]  # 6 kept by Cyrillic
    records += [(p, f"https://example.rs/l{i}") for i, p in enumerate(latin[:4])]  # 4 kept by Latin
    records += [(cyrillic[10], "https://www.bbc.com/serbian/cyr/x"),  # BBC, in either script
                (latin[10], "https://bbc.co.uk/serbian/lat/y"),
                (cyrillic[11] + "\n" + test_article.split("\n")[0], "https://example.rs/copy"),  # a test article
                (latin[11] + " " + val_summary, "https://example.rs/copy2")]  # a validation summary
    _mc4_file(tmp_path / "c4-sr.json.gz", records)
    return cyrillic, latin


def test_mc4_gzip_is_filtered_by_script_bbc_and_xlsum_overlap_with_counts(tmp_path):
    cyrillic, latin = _serbian_mc4(tmp_path)
    paths = {"text_paths": str(tmp_path / "c4-{iso1}.json.gz"), "xlsum_dir": str(testdata.path("xlsum"))}
    counts = {}
    for lang, kept_texts in (("serbian_cyrillic", cyrillic[:6]), ("serbian_latin", latin[:4])):
        out = data.prepare_language_text(lang, experiment.text_path(paths, lang), tmp_path / lang,
                                         xlsum_dir=paths["xlsum_dir"])
        assert out.read_text("utf-8").splitlines() == kept_texts
        report = json.loads((tmp_path / lang / "data_report.json").read_text("utf-8"))[lang]
        counts[lang] = [report[k] for k in ("read", "kept", "dropped_bbc", "dropped_script", "dropped_overlap")]
        assert report["complete"] and report["reference_sentences"] > 0
    assert counts == {"serbian_cyrillic": [14, 6, 2, 5, 1], "serbian_latin": [14, 4, 2, 7, 1]}
    # max_kept stops reading early, and a finished preparation is not redone.
    out = data.prepare_language_text("serbian_cyrillic", tmp_path / "c4-sr.json.gz", tmp_path / "capped",
                                     max_kept=2)
    report = json.loads((tmp_path / "capped" / "data_report.json").read_text("utf-8"))["serbian_cyrillic"]
    assert (report["read"], report["kept"], report["complete"]) == (2, 2, False)
    assert data.prepare_language_text("serbian_cyrillic", "/nonexistent", tmp_path / "capped") == out


def test_text_with_nothing_in_the_language_script_is_an_error_not_an_empty_module(tmp_path):
    _mc4_file(tmp_path / "c4-uz.json.gz", [(_uzbek_latin(r["summary"]), f"https://example.uz/{i}")
                                           for i, r in enumerate(_xlsum("uzbek"))])
    with pytest.raises(data.EmptySplitError, match=r"no uzbek text left.*'dropped_script': 15.*script Cyrl"):
        data.prepare_language_text("uzbek", tmp_path / "c4-uz.json.gz", tmp_path / "out")
    assert not (tmp_path / "out" / "text.txt").exists()


def test_language_stage_trains_on_the_filtered_mc4_text(tmp_path, monkeypatch):
    _serbian_mc4(tmp_path)
    config = _xlsum_config()
    seen = {}
    monkeypatch.setattr(experiment, "train", lambda cfg, run_dir: seen.update(cfg=cfg, run_dir=run_dir))
    paths = {"text_paths": str(tmp_path / "c4-{iso1}.json.gz"), "xlsum_dir": str(testdata.path("xlsum")),
             "text_overrides": {}}
    experiment.train_module(config, str(tmp_path / "w"), "lang", "serbian_latin", paths, "tok", "base")
    cfg = seen["cfg"]
    assert cfg.data.source == "text" and cfg.data.paths == str(tmp_path / "w" / "train" / "lang_serbian_latin" / "text.txt")
    assert list(data.TextLinesSource([cfg.data.paths])[i] for i in range(4)) == _udhr_paragraphs("udhr_srp_latn.xml")[:4]
    assert (tmp_path / "w" / "train" / "lang_serbian_latin" / "data_report.json").is_file()
    with pytest.raises(language_text.NoUnlabeledTextError, match="oromo"):
        experiment.train_module(config, str(tmp_path / "w"), "lang", "oromo", paths, "tok", "base")


def _xlsum_config():
    spec = importlib.util.spec_from_file_location("cfg_xlsum_mt5", testdata.DATA.parents[1] / "configs" / "xlsum_mt5.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config("runlocal")


def test_a_missing_text_file_is_reported_before_any_training(tmp_path):
    config = _xlsum_config()
    config.data.text_paths = str(tmp_path / "c4-{mc4}.json.gz")
    config.data.text_overrides = {}
    with pytest.raises(data.MissingDataError, match=r"unlabeled text of english \(data.text_paths\): .*c4-en\.json\.gz"):
        experiment.prepare_data(config, str(tmp_path))
