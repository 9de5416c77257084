"""Sources: real XL-Sum / Tatoeba / UDHR / GEM samples load, and bad input fails clearly."""

import gzip
import json
import re
import sys

import pytest

from peft_jax import languages
from peft_jax.data import sources
from peft_jax.data.sources import tfds_datasets

import testdata

DATA = testdata.DATA
XLSUM = DATA / "xlsum"


def _reference_records(path):
    """Independent reader: the whole file, split into lines, each parsed with json."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.mark.parametrize("language", languages.XLSUM_NAMES)
def test_every_xlsum_sample_language_loads_all_splits(language):
    for split, suffix in (("train", "train"), ("validation", "val"), ("test", "test")):
        examples = list(sources.xlsum(XLSUM, language, split))
        expected = _reference_records(XLSUM / f"{language}_{suffix}.jsonl")
        assert examples == [{f: str(r[f]) for f in sources.XLSUM_FIELDS} for r in expected]
        assert all(ex["text"] and ex["summary"] for ex in examples)


def test_xlsum_accepts_iso_codes_bcp47_and_split_aliases():
    by_name = list(sources.xlsum(XLSUM, "english", "validation"))
    assert list(sources.xlsum(XLSUM, "en", "val")) == by_name
    assert list(sources.xlsum(XLSUM, "eng", "VAL")) == by_name
    traditional = _reference_records(XLSUM / "chinese_traditional_test.jsonl")
    assert [ex["id"] for ex in sources.xlsum(XLSUM, "zh-Hant", "test")] == [r["id"] for r in traditional]


def test_xlsum_stream_is_reiterable():
    stream = sources.xlsum(XLSUM, "french", "train")
    assert list(stream) == list(stream)
    assert stream.stats.records == len(_reference_records(XLSUM / "french_train.jsonl"))


def test_unknown_language_code_suggests_close_matches():
    with pytest.raises(languages.UnknownLanguageError, match="english"):
        sources.xlsum(XLSUM, "englsh", "test")


def test_unknown_split_is_rejected():
    with pytest.raises(ValueError, match="unknown split 'dev2'"):
        sources.xlsum(XLSUM, "english", "dev2")


def test_missing_directory_states_expected_layout(tmp_path):
    with pytest.raises(sources.MissingDataError, match=r"does not exist.*<language>_\{train,val,test\}\.jsonl"):
        sources.xlsum(tmp_path / "nope", "english", "test")


def test_missing_file_names_path_and_what_is_present(tmp_path):
    (tmp_path / "english_train.jsonl").write_text('{"id": 1}\n', encoding="utf-8")
    with pytest.raises(FileNotFoundError, match=r"english_test\.jsonl.*present: english_train\.jsonl"):
        sources.xlsum(tmp_path, "english", "test")


def _write(path, lines):
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


GOOD = json.dumps({"id": "a", "url": "u", "title": "t", "summary": "s", "text": "x"}).encode()


def test_malformed_json_line_names_file_and_line(tmp_path):
    _write(tmp_path / "english_test.jsonl", [GOOD, b'{"id": "b", "title": ', GOOD])
    with pytest.raises(sources.MalformedRecordError, match=r"english_test\.jsonl:2: malformed JSON"):
        list(sources.xlsum(tmp_path, "english", "test"))


def test_missing_field_names_field_file_and_line(tmp_path):
    _write(tmp_path / "english_test.jsonl", [GOOD, GOOD, b'{"id": "c", "title": "t", "text": "x"}'])
    with pytest.raises(sources.MissingFieldError, match=r"english_test\.jsonl:3: missing field\(s\) \['summary'\]"):
        list(sources.xlsum(tmp_path, "english", "test"))


def test_empty_split_raises(tmp_path):
    (tmp_path / "english_test.jsonl").write_bytes(b"")
    with pytest.raises(sources.EmptySplitError, match="english_test.jsonl"):
        sources.xlsum(tmp_path, "english", "test")
    (tmp_path / "english_val.jsonl").write_bytes(b"\n  \n")
    with pytest.raises(sources.EmptySplitError, match="no records"):
        list(sources.xlsum(tmp_path, "english", "validation"))


def test_invalid_utf8_fails_with_line_or_is_skipped_and_counted(tmp_path):
    bad = b'{"id": "b", "title": "\xff\xfe", "summary": "s", "text": "x"}'
    _write(tmp_path / "english_test.jsonl", [GOOD, bad, GOOD])
    with pytest.raises(sources.BadEncodingError, match=r"english_test\.jsonl:2: not valid UTF-8.*on_bad_utf8='skip'"):
        list(sources.xlsum(tmp_path, "english", "test"))
    stream = sources.xlsum(tmp_path, "english", "test", on_bad_utf8="skip")
    assert len(list(stream)) == 2
    assert stream.stats.skipped_bad_utf8 == 1 and stream.stats.lines == 3
    with pytest.raises(ValueError, match="on_bad_utf8 must be one of"):
        sources.xlsum(tmp_path, "english", "test", on_bad_utf8="ignore")


def test_all_lines_skipped_is_an_empty_split(tmp_path):
    _write(tmp_path / "english_test.jsonl", [b"\xff"])
    with pytest.raises(sources.EmptySplitError, match="1 skipped as invalid UTF-8"):
        list(sources.xlsum(tmp_path, "english", "test", on_bad_utf8="skip"))


def test_hub_source_without_datasets_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(sources.MissingDependencyError, match="pip install datasets"):
        sources.xlsum("csebuetnlp/xlsum", "english", "test")


def test_text_lines_reads_plain_jsonl_and_mc4_gzip(tmp_path):
    (tmp_path / "a.txt").write_text("one\n\ntwo\r\n", encoding="utf-8")
    (tmp_path / "b.jsonl").write_text('{"text": "three"}\n{"text": "four", "url": "u"}\n', encoding="utf-8")
    for shard, texts in ((0, ["five", "six"]), (1, ["seven"])):
        with gzip.open(tmp_path / f"c4-sw.tfrecord-0000{shard}-of-00002.json.gz", "wt", encoding="utf-8") as f:
            f.writelines(json.dumps({"text": t, "timestamp": "x", "url": "y"}) + "\n" for t in texts)
    assert list(sources.text_lines([tmp_path / "a.txt", tmp_path / "b.jsonl"])) == ["one", "two", "three", "four"]
    assert list(sources.mc4(tmp_path, "sw")) == ["five", "six", "seven"]
    assert list(sources.text_lines(str(tmp_path / "c4-sw.*.json.gz"))) == ["five", "six", "seven"]


def test_text_lines_errors_name_the_problem(tmp_path):
    with pytest.raises(sources.MissingDataError, match="no file matches"):
        sources.text_lines(str(tmp_path / "*.txt"))
    with pytest.raises(sources.MissingDataError, match="c4-sw"):
        sources.mc4(tmp_path, "swahili")
    (tmp_path / "b.jsonl").write_text('{"text": "x"}\n{"content": "y"}\n', encoding="utf-8")
    with pytest.raises(sources.MissingFieldError, match=r"b\.jsonl:2: missing field\(s\) \['text'\]"):
        list(sources.text_lines(tmp_path / "b.jsonl"))
    (tmp_path / "c.json.gz").write_bytes(b"not gzip")
    with pytest.raises(sources.DataError, match="not a valid gzip file"):
        list(sources.text_lines(tmp_path / "c.json.gz"))


def test_plain_text_holding_json_records_is_refused_and_names_the_mc4_source(tmp_path):
    record = json.dumps({"text": "Habari za asubuhi", "timestamp": "2020-01-01", "url": "https://example.org/1"})
    (tmp_path / "c4-sw.txt").write_text("\n" + record + "\n" + record + "\n", encoding="utf-8")
    for read in (lambda p: list(sources.text_lines(p)), lambda p: sources.TextLinesSource([p])):
        with pytest.raises(sources.MalformedRecordError, match=r"c4-sw\.txt:2: looks like JSON records.*mc4 source"):
            read(tmp_path / "c4-sw.txt")
    # JSON without a text field, and real plain text (Tatoeba), are still read as text.
    (tmp_path / "other.txt").write_text('{"a": 1}\n[1, 2]\n', encoding="utf-8")
    assert list(sources.text_lines(tmp_path / "other.txt")) == ['{"a": 1}', "[1, 2]"]
    assert len(sources.TextLinesSource([DATA / "tatoeba" / "tatoeba.hin-eng.hin"])) == 400


def test_tatoeba_reads_the_language_side():
    expected = [line for line in (DATA / "tatoeba" / "tatoeba.fra-eng.fra").read_text(encoding="utf-8").splitlines()
                if line.strip()]
    assert list(sources.tatoeba(DATA / "tatoeba", "fr")) == expected
    chinese = list(sources.tatoeba(DATA / "tatoeba", "chinese_simplified"))  # the file is named cmn
    cmn_lines = (DATA / "tatoeba" / "tatoeba.cmn-eng.cmn").read_text(encoding="utf-8").splitlines()
    assert len(chinese) == len(cmn_lines) == 400 and all(chinese)
    english = list(sources.tatoeba(DATA / "tatoeba", "english"))
    # The union of every pair's English side, without repeats: more than the largest single side.
    largest_side = max(len(p.read_text(encoding="utf-8").splitlines()) for p in (DATA / "tatoeba").glob("*.eng"))
    assert len(english) == len(set(english)) > largest_side


def test_tatoeba_language_without_file_is_a_clear_error(tmp_path):
    with pytest.raises(sources.MissingDataError, match="Tatoeba: no file for english"):
        sources.tatoeba(tmp_path, "en")
    with pytest.raises(sources.MissingDataError, match="does not exist"):
        sources.tatoeba(tmp_path / "missing", "en")


def _udhr_paragraph_count(path):
    """Independent count: <title>/<para> elements outside <note>, by regular expression."""
    raw = re.sub(r"<note>.*?</note>", "", path.read_text(encoding="utf-8"), flags=re.S)
    return len(re.findall(r"<(?:title|para)>\s*[^<\s]", raw))


def test_udhr_picks_the_file_of_the_language_and_script():
    latin = list(sources.udhr(DATA / "udhr", "serbian_latin"))
    cyrillic = list(sources.udhr(DATA / "udhr", "sr"))
    assert latin[0] == "OPŠTA DEKLARACIJA O PRAVIMA ČOVEKA"
    assert re.search("[А-Яа-я]", cyrillic[0]) and not re.search("[А-Яа-я]", " ".join(latin))
    index = {e.key: e for e in sources.udhr_index(DATA / "udhr")}
    swahili_key = next(k for k, e in index.items() if e.iso3 == "swh")
    assert len(list(sources.udhr(DATA / "udhr", "swahili"))) == _udhr_paragraph_count(
        DATA / "udhr" / f"udhr_{swahili_key}.xml")


def test_gem_wikilingua_reads_aligned_files_including_cross_lingual():
    gem = DATA / "gem"
    src = (gem / "wiki_lingua_arabic_ar" / "val.src.ar").read_text(encoding="utf-8").splitlines()
    tgt_en = (gem / "wiki_lingua_arabic_ar" / "val.tgt.en").read_text(encoding="utf-8").splitlines()
    examples = list(sources.gem_wikilingua(gem, "arabic", "validation", summary_language="en"))
    assert [ex["text"] for ex in examples] == [s.strip() for s in src]
    assert [ex["summary"] for ex in examples] == [t.strip() for t in tgt_en]
    assert examples[0]["id"] == "wiki_lingua_arabic_ar-val-0"
    with pytest.raises(sources.MissingDataError, match="wiki_lingua_<name>_sw"):
        sources.gem_wikilingua(gem, "swahili", "test")


def test_gem_misaligned_files_name_both_files(tmp_path):
    directory = tmp_path / "wiki_lingua_french_fr"
    directory.mkdir()
    (directory / "test.src.fr").write_text("a\nb\nc\n", encoding="utf-8")
    (directory / "test.tgt.fr").write_text("x\ny\n", encoding="utf-8")
    with pytest.raises(sources.MalformedRecordError, match=r"not line-aligned.*test\.tgt\.fr ends before line 3"):
        list(sources.gem_wikilingua(tmp_path, "fr", "test"))


def test_unprepared_tfds_dataset_says_how_to_prepare_it(tmp_path):
    with pytest.raises(sources.MissingDataError, match=r"'c4/multilingual' split 'sw'.*tfds build c4/multilingual"):
        sources.tfds_mc4("swahili", data_dir=tmp_path)
    with pytest.raises(sources.MissingDataError, match="gem/wiki_lingua_arabic_ar"):
        sources.tfds_wikilingua("ar", "test", data_dir=tmp_path)


def test_json_lines_source_random_access_matches_the_stream(tmp_path):
    paths = [XLSUM / "english_train.jsonl", XLSUM / "hindi_test.jsonl"]
    source = sources.JsonLinesSource(paths)
    stream = list(sources.xlsum(XLSUM, "english", "train")) + list(sources.xlsum(XLSUM, "hindi", "test"))
    assert len(source) == len(stream)
    for i in reversed(range(len(stream))):  # out of order on purpose
        assert {k: str(v) for k, v in source[i].items()} == stream[i]
    hindi = sources.xlsum_source(XLSUM, "hi", "test")
    assert [hindi[i] for i in range(len(hindi))] == list(sources.xlsum(XLSUM, "hindi", "test"))
    long_text = "w" * 200_000  # longer than one read chunk
    path = _write(tmp_path / "long.jsonl", [b"", json.dumps({"text": long_text}).encode(), b'{"text": "end"}'])
    long_source = sources.JsonLinesSource([path], fields=("text",))
    assert [long_source[0]["text"], long_source[1]["text"]] == [long_text, "end"]


def test_json_lines_source_errors_name_file_and_line(tmp_path):
    path = _write(tmp_path / "x.jsonl", [GOOD, b"{oops", b"\xff", GOOD])
    with pytest.raises(sources.BadEncodingError, match=r"x\.jsonl:3"):
        sources.JsonLinesSource([path])
    source = sources.JsonLinesSource([path], on_bad_utf8="skip")
    assert len(source) == 3 and source.stats.skipped_bad_utf8 == 1
    with pytest.raises(sources.MalformedRecordError, match=r"x\.jsonl:2: malformed JSON"):
        source[1]
    assert source[2]["id"] == "a"
    with pytest.raises(sources.DataError, match="gzip files have no random access"):
        sources.TextLinesSource([tmp_path / "y.txt.gz"])


def test_record_file_round_trips_any_stream(tmp_path):
    stream = list(sources.xlsum(XLSUM, "japanese", "test"))
    assert sources.write_records(stream, tmp_path / "ja.array_record") == len(stream)
    records = sources.RecordFileSource(tmp_path / "ja.array_record")
    assert [records[i] for i in range(len(records))] == stream


def test_prepared_tfds_dataset_is_read_without_download(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    np = pytest.importorskip("numpy")
    tfds.disable_progress_bar()

    class PeftJaxTinyText(tfds.core.GeneratorBasedBuilder):  # prepared locally, like `tfds build`
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            features = tfds.features.FeaturesDict({"text": tfds.features.Text(),
                                                   "n": tfds.features.Scalar(dtype=np.int32)})
            return tfds.core.DatasetInfo(builder=self, features=features)

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            for i in range(5):
                yield i, {"text": f"ligne {i} ü", "n": i}

    PeftJaxTinyText(data_dir=tmp_path, file_format="array_record").download_and_prepare()
    texts = list(sources.tfds_text("peft_jax_tiny_text", "train", data_dir=tmp_path))
    assert sorted(texts) == [f"ligne {i} ü" for i in range(5)]


def test_tfds_helpers_map_names_splits_and_fields(monkeypatch):
    calls = []

    def fake_source(name, split, data_dir=None):
        calls.append((name, split))
        return [{"text": "t".encode(), "gem_id": b"g-0", "source_aligned": {"ar": "نص".encode(), "en": b"text"},
                 "target_aligned": {"ar": "ملخص".encode(), "en": b"summary"}}]
    monkeypatch.setattr(tfds_datasets, "tfds_source", fake_source)  # the module the helpers look it up in
    assert list(sources.tfds_mc4("hebrew", "validation")) == ["t"]
    assert list(sources.tfds_wikipedia("fr")) == ["t"]
    same = list(sources.tfds_wikilingua("arabic", "validation"))
    cross = list(sources.tfds_wikilingua("ar", "test", summary_language="en"))
    assert calls == [("c4/multilingual", "iw-validation"), ("wikipedia/20230601.fr", "train"),
                     ("gem/wiki_lingua_arabic_ar", "validation"), ("gem/wiki_lingua_arabic_ar", "test")]
    assert same == [{"id": "g-0", "title": "", "summary": "ملخص", "text": "نص"}]
    assert cross[0]["summary"] == "summary" and cross[0]["text"] == "نص"
    with pytest.raises(ValueError, match="same language or English"):
        sources.tfds_wikilingua("ar", "test", summary_language="fr")


# The public names of `peft_jax.data.sources`, which code imports from there and from `peft_jax.data`.
_SOURCE_NAMES = (
    "BAD_UTF8_POLICIES BadEncodingError DataError EmptySplitError GEM_LAYOUT GEM_WIKILINGUA_NAMES JsonLinesExamples "
    "JsonLinesSource MalformedRecordError MissingDataError MissingDependencyError MissingFieldError ReadStats "
    "RecordFileSource TextLines TextLinesSource UDHR_NAMESPACE UdhrEntry XLSUM_FIELDS XLSUM_HF_NAME XLSUM_LAYOUT "
    "expand_paths gem_wikilingua mc4 mc4_code parse_json_record read_lines split_suffix tatoeba text_lines "
    "tfds_mc4 tfds_source tfds_text tfds_wikilingua tfds_wikipedia udhr udhr_index write_records xlsum "
    "xlsum_source").split()


def test_every_source_name_is_importable_from_sources_and_data():
    import peft_jax.data as data

    missing = [name for name in _SOURCE_NAMES if not hasattr(sources, name)]
    assert not missing
    assert set(sources.__all__) == set(_SOURCE_NAMES)
    for name in data.__all__:
        if name in _SOURCE_NAMES:
            assert getattr(data, name) is getattr(sources, name)
