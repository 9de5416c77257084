"""Invariants of the languages table and its code resolution (peft_jax.languages)."""

import collections
import dataclasses
import json
import unicodedata

import pytest

from peft_jax import languages

import testdata

DATA = testdata.DATA

# Unicode character-name prefix of the letters each ISO 15924 script code stands for.
_UNICODE_PREFIX = {
    "Latn": ("LATIN",), "Cyrl": ("CYRILLIC",), "Arab": ("ARABIC",), "Beng": ("BENGALI",),
    "Deva": ("DEVANAGARI",), "Ethi": ("ETHIOPIC",), "Gujr": ("GUJARATI",), "Guru": ("GURMUKHI",),
    "Hans": ("CJK",), "Hant": ("CJK",), "Jpan": ("CJK", "HIRAGANA", "KATAKANA"),
    "Kore": ("HANGUL",), "Mymr": ("MYANMAR",), "Sinh": ("SINHALA",), "Taml": ("TAMIL",),
    "Telu": ("TELUGU",), "Thai": ("THAI",),
}


def _letters_by_prefix(text):
    """Counts letters by the first word of their Unicode name."""
    counts = collections.Counter()
    for char in text:
        if unicodedata.category(char).startswith("L"):
            counts[unicodedata.name(char, "UNKNOWN").split()[0]] += 1
    return counts


def test_table_covers_exactly_the_xlsum_configs_on_disk():
    on_disk = {p.name.rsplit("_", 1)[0] for p in (DATA / "xlsum").glob("*_test.jsonl")}
    assert len(on_disk) == 45
    assert {lang.name for lang in languages.xlsum_languages()} == on_disk
    assert len(languages.all_languages()) > 45


def test_table_script_matches_the_letters_of_real_xlsum_summaries():
    for lang in languages.xlsum_languages():
        path = DATA / "xlsum" / f"{lang.name}_test.jsonl"
        text = " ".join(json.loads(line)["summary"] for line in path.read_text("utf-8").splitlines())
        counts = _letters_by_prefix(text)
        share = sum(counts[p] for p in _UNICODE_PREFIX[lang.script]) / sum(counts.values())
        # Latin-script names and acronyms are common in news text, hence not ~1.0.
        assert counts.most_common(1)[0][0] in _UNICODE_PREFIX[lang.script], lang.name
        assert share > 0.7, (lang.name, lang.script, counts.most_common(3))


def test_codes_resolve_case_and_separator_insensitively():
    for code in ("zh-Hans", "ZH_HANS", "zh_hans", " zh-hans "):
        assert languages.resolve(code).name == "chinese_simplified"
    assert languages.resolve("Scottish-Gaelic").iso3 == "gla"
    assert languages.resolve("HIN").name == "hindi"


def test_ambiguous_codes_resolve_to_documented_defaults():
    assert languages.resolve("zh").name == "chinese_simplified"
    assert languages.resolve("zho").name == "chinese_simplified"
    assert languages.resolve("zh-Hant").name == "chinese_traditional"
    assert languages.resolve("sr").name == "serbian_cyrillic"
    assert languages.resolve("sr-Latn").name == "serbian_latin"


def test_only_documented_iso_codes_are_shared_between_rows():
    owners = collections.defaultdict(set)
    for lang in languages.all_languages():
        for code in (lang.iso1, lang.iso3):
            if code:
                owners[code].add(lang.name)
    shared = {code for code, names in owners.items() if len(names) > 1}
    assert shared == {"zh", "zho", "sr", "srp"}


def test_every_language_resolves_from_its_name_and_bcp47_tag():
    for lang in languages.all_languages():
        assert languages.resolve(lang.name) is lang
        assert languages.resolve(lang.bcp47) is lang
        assert languages.resolve(lang.iso3).iso3 == lang.iso3


def test_tatoeba_individual_language_codes_resolve_through_aliases():
    expected = {"cmn": "chinese_simplified", "pes": "persian", "swh": "swahili", "zsm": "malay",
                "lvs": "latvian", "hin": "hindi", "tha": "thai", "jpn": "japanese"}
    for code, name in expected.items():
        assert (DATA / "tatoeba" / f"tatoeba.{code}-eng.{code}").exists()
        assert languages.resolve(code).name == name


@pytest.mark.parametrize("name,family,genus,script", [
    ("hindi", "Indo-European", "Indic", "Deva"), ("amharic", "Afro-Asiatic", "Semitic", "Ethi"),
    ("somali", "Afro-Asiatic", "Cushitic", "Latn"), ("swahili", "Niger-Congo", "Bantoid", "Latn"),
    ("tamil", "Dravidian", "Southern Dravidian", "Taml"), ("thai", "Kra-Dai", "Kam-Tai", "Thai"),
    ("uzbek", "Turkic", "Turkic", "Cyrl"), ("welsh", "Indo-European", "Celtic", "Latn"),
])
def test_typology_facts_of_sample_languages(name, family, genus, script):
    lang = languages.resolve(name)
    assert (lang.family, lang.genus, lang.script) == (family, genus, script)


def test_unknown_code_error_suggests_close_matches():
    with pytest.raises(languages.UnknownLanguageError, match="bengali"):
        languages.resolve("bengalli")
    with pytest.raises(ValueError, match="unknown language code 'xx-nowhere'"):
        languages.resolve("xx-nowhere")


def test_register_adds_a_made_up_language_and_refuses_clashing_codes():
    made_up = languages.Language(name="testlang_vowelese", iso1=None, iso3="qvw", bcp47="qvw-Latn",
                                 family="Synthetic", genus="Vowelic", script="Latn")
    languages.register(made_up)
    languages.register(made_up)  # identical re-registration is a no-op
    assert languages.resolve("QVW") is made_up
    assert made_up in languages.all_languages()
    assert made_up not in languages.xlsum_languages()
    clash = dataclasses.replace(made_up, name="testlang_other", bcp47="qvx", iso3="hin")
    with pytest.raises(languages.LanguageClashError, match="'hin'.*'hindi'"):
        languages.register(clash)
    with pytest.raises(languages.UnknownLanguageError):
        languages.resolve("testlang_other")


def test_register_rejects_malformed_fields():
    bad = languages.Language(name="testlang_bad", iso1=None, iso3="qbd", bcp47="qbd",
                             family="Synthetic", genus="X", script="latin")
    with pytest.raises(ValueError, match="script"):
        languages.register(bad)



@pytest.mark.parametrize("row, message", [
    ("uzbek\tmc4\tuz\tLatn\tscript\t", r"uzbek: script must be 'Cyrl' as in languages.tsv"),
    ("uzbek\tnone\tuz\tCyrl\tscript\t", r"uzbek: a row has a code and a filter exactly when its source is not 'none'"),
    ("uzbek\tcc100\tuz\tCyrl\tscript\t", r"uzbek: source must be one of \('mc4', 'none'\)"),
    ("uzbekk\tmc4\tuz\tCyrl\tscript\t", r"unknown language code 'uzbekk'"),
])
def test_unlabeled_text_table_rows_are_checked_against_the_languages_table(tmp_path, monkeypatch, row, message):
    lines = languages.UNLABELED_TABLE_PATH.read_text("utf-8").splitlines()
    line_no = next(i for i, line in enumerate(lines, start=1) if line.startswith("uzbek\t"))
    lines[line_no - 1] = row
    bad = tmp_path / "unlabeled_text.tsv"
    bad.write_text("\n".join(lines) + "\n", encoding="utf-8")
    monkeypatch.setattr(languages, "UNLABELED_TABLE_PATH", bad)
    languages._unlabeled_table.cache_clear()
    try:
        with pytest.raises(languages.LanguageTableError, match=rf"unlabeled_text\.tsv:{line_no}: {message}"):
            languages.unlabeled_source("swahili")
    finally:
        languages._unlabeled_table.cache_clear()  # monkeypatch restores the path; the next call reloads the real table
