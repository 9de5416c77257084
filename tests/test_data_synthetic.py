"""The synthetic world: deterministic, typologically varied, and task/language separable."""

import collections
import itertools

import numpy as np
import pytest

from peft_jax import languages
from peft_jax.data import sources, synthetic


@pytest.fixture(scope="module")
def world():
    return synthetic.World(seed=0)


def _to_latin(word, script):
    return word.translate(str.maketrans(synthetic.SCRIPTS[script], synthetic.SCRIPTS["Latn"]))


def _levenshtein(a, b):
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        previous, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (ca != cb))
    return row[-1]


def test_same_seed_gives_the_same_world_and_another_seed_another():
    a, b, c = synthetic.World(seed=0), synthetic.World(seed=0), synthetic.World(seed=1)
    assert a.summarization("syn_en", "train", 20) == b.summarization("syn_en", "train", 20)
    assert a.unlabeled("syn_mod", 20) == b.unlabeled("syn_mod", 20)
    assert a.lexicon("syn_eos") == b.lexicon("syn_eos")
    assert a.lexicon("syn_eos") != c.lexicon("syn_eos")
    assert a.summarization("syn_en", "test", 5) != c.summarization("syn_en", "test", 5)


def test_examples_are_prefix_stable(world):
    assert world.summarization("syn_mid", "validation", 10)[:4] == world.summarization("syn_mid", "validation", 4)


def test_six_languages_in_three_families_are_registered(world):
    assert [lang.name for lang in world.languages] == [s.name for s in synthetic.SPECS]
    families = collections.Counter(lang.family for lang in world.languages)
    assert sorted(families.values()) == [2, 2, 2]
    assert languages.resolve("syn_wes") == world.languages[1]
    assert languages.resolve("qab") == languages.resolve("qab-Latn") == world.languages[1]
    assert {lang.script for lang in world.languages} == {"Latn", "Cyrl", "Grek", "Geor"}
    assert {s.order for s in synthetic.SPECS} == {"SVO", "SOV", "VSO"}
    assert world.source_language.name == "syn_en"
    assert all(world.related(t)[0] in world.labeled_languages for t in world.target_languages)
    synthetic.World(seed=3)  # registering the same languages again is harmless


def test_scripts_are_letter_bijections():
    for script, letters in synthetic.SCRIPTS.items():
        assert len(letters) == len(set(letters)) == len(synthetic.SCRIPTS["Latn"]), script


def test_each_language_writes_only_its_own_script(world):
    for lang in world.languages:
        allowed = set(synthetic.SCRIPTS[lang.script]) | {" ", "."}
        text = " ".join(world.unlabeled(lang, 30)) + " ".join(ex["text"] + ex["summary"] + ex["title"]
                                                           for ex in world.summarization(lang, "test", 10))
        assert set(text) <= allowed, lang.name


def test_related_languages_share_most_stems_and_unrelated_ones_do_not(world):
    lexicons = {lang.name: {c: _to_latin(w, lang.script) for c, w in world.lexicon(lang).items()}
                for lang in world.languages}
    distance = {}
    for a, b in itertools.combinations(world.languages, 2):
        distance[(a.family == b.family)] = distance.get(a.family == b.family, []) + [np.mean([
            _levenshtein(lexicons[a.name][c], lexicons[b.name][c])
            / max(len(lexicons[a.name][c]), len(lexicons[b.name][c])) for c in synthetic.CONCEPTS])]
    assert max(distance[True]) < 0.5 < 0.75 < min(distance[False])


def _concepts(world, language, sentence):
    """Concepts of a rendered sentence, read back through the language's lexicon."""
    lexicon = world.lexicon(language)
    inverse = {w: c for c, w in lexicon.items() if c not in synthetic.AFFIXES and c not in synthetic.VERBS}
    inverse.update({lexicon[v] + lexicon["TENSE"]: v for v in synthetic.VERBS})
    out = []
    for token in sentence.rstrip(".").split():
        if token not in inverse:  # a plural noun: strip the language's affix
            affix = lexicon["PLURAL"]
            suffixed = token.endswith(affix) and token[: -len(affix)] in inverse
            token = token[: -len(affix)] if suffixed else token[len(affix):]
        out.append(inverse[token])
    return collections.Counter(out)


def test_summary_is_the_marked_event_compressed_whatever_the_language(world):
    for index in range(25):
        article = world.article("syn_en", "test", index)
        main = article.events[article.key]
        expected = collections.Counter([main.agent, main.verb, main.obj] + ([str(main.count)] if main.count > 1 else [])
                                       + ([main.place, "ADPOSITION"] if main.place else []))
        for lang in world.languages:
            assert world.article(lang, "test", index) == article  # held-out sets are parallel
            example = world.summarization(lang, "test", index + 1)[index]
            assert _concepts(world, lang, example["summary"]) == expected, (lang.name, index)
            # the marker word shows which sentence is summarized, in every language
            marker = world.lexicon(lang)["MARKER"]
            marked = [s for s in example["text"].split(".") if marker in s.split()]
            assert len(marked) == 1 and _concepts(world, lang, marked[0])["MARKER"] == 1


def test_summaries_use_the_same_grammar_as_unlabeled_text(world):
    # Language knowledge (learned from unlabeled text) is all the summary needs: it is an
    # ordinary sentence of the language, rendered by the same function as unlabeled text.
    for lang in world.languages:
        for index in range(10):
            article = world.article(lang, "test", index)
            summary = world.summarization(lang, "test", index + 1)[index]["summary"]
            assert summary == world.render_event(article.summary_event(), lang)


def test_word_order_differs_by_language(world):
    event = synthetic.Event("fox", "buy", "apple")
    order = {}
    for lang in world.languages:
        lex = world.lexicon(lang)
        words = world.render_event(event, lang).rstrip(".").split()
        role = {lex["fox"]: "S", lex["buy"] + lex["TENSE"]: "V", lex["apple"]: "O"}
        order[lang.name] = "".join(role[w] for w in words)
    assert order == {s.name: s.order for s in synthetic.SPECS}


def test_identify_recovers_the_language_of_held_out_text(world):
    for lang in world.languages:
        paragraphs = world.unlabeled(lang, 40, split="validation")
        summaries = [ex["summary"] for ex in world.summarization(lang, "test", 40)]
        assert all(world.identify(t) == lang.name for t in paragraphs + summaries), lang.name
    assert world.identify("") is None and world.identify("hello world 123") is None


def test_target_languages_have_no_training_labels(world):
    for lang in world.target_languages:
        with pytest.raises(ValueError, match="target language without training labels"):
            world.summarization(lang, "train", 1)
    assert len(world.summarization("syn_eas", "train", 3)) == 3
    with pytest.raises(ValueError, match="not a language of the synthetic world"):
        world.summarization("english", "test", 1)


def test_world_in_xlsum_layout_loads_through_the_xlsum_reader(world, tmp_path):
    written = world.write_xlsum_layout(tmp_path, n_train=6, n_validation=3, n_test=4)
    assert len(written) == 3 * 3 + 3 * 2
    assert list(sources.xlsum(tmp_path, "syn_wes", "test")) == world.summarization("syn_wes", "test", 4)
    assert list(sources.xlsum(tmp_path, "qaa", "train")) == world.summarization("syn_en", "train", 6)
    with pytest.raises(sources.MissingDataError, match="syn_wes_train.jsonl"):
        sources.xlsum(tmp_path, "syn_wes", "train")
    paths = world.write_unlabeled(tmp_path / "text", 5, names=["syn_eos"])
    assert list(sources.text_lines(paths)) == world.unlabeled("syn_eos", 5)
