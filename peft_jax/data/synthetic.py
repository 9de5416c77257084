"""A small synthetic multilingual world: six made-up languages, unlabeled text, a summarization task.

Everything is generated from a seed in seconds, without downloads. The languages share
one meaning space (agents, objects, actions, attributes, numbers, places, times) and
differ in vocabulary, script, word order, adjective position and plural affix; they form
three families of two, whose members share most word stems. Articles are sequences of
events; the reference summary states the one event marked as important, compressed to
agent, action, count + object and place. The rule acts on meanings only, so the task is
the same in every language while everything language-specific lives in the rendering:
that is the separation language and task arithmetic relies on.
See ``docs/synthetic_world.md`` for the design and what a perfect system outputs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import string
from collections.abc import Sequence

import numpy as np

from peft_jax import languages

AGENTS = ("farmer", "teacher", "doctor", "merchant", "child", "soldier", "king", "sailor",
          "baker", "hunter", "fox", "bear", "wolf", "eagle", "horse", "dog")
OBJECTS = ("apple", "boat", "house", "book", "letter", "stone", "sword", "coin", "basket",
           "bridge", "tree", "lamp", "drum", "bread", "fish", "rope")
VERBS = ("buy", "sell", "build", "find", "carry", "break", "paint", "steal", "repair", "hide",
         "lose", "count")
ATTRIBUTES = ("red", "old", "small", "big", "new", "green", "heavy", "quiet")
NUMBERS = tuple(str(n) for n in range(2, 10))
PLACES = ("market", "river", "village", "forest", "harbor", "mountain", "castle", "field")
TIMES = ("yesterday", "today", "dawn", "night", "winter", "summer")
# Grammatical morphemes: the place adposition, the importance marker, the plural affix and
# the verb ending. The verb ending is never inherited, so every sentence (it always has a
# verb) tells even sister languages apart, as conjugation does for Spanish and Portuguese.
FUNCTION = ("ADPOSITION", "MARKER", "PLURAL", "TENSE")
AFFIXES = ("PLURAL", "TENSE")
CONCEPTS = AGENTS + OBJECTS + VERBS + ATTRIBUTES + NUMBERS + PLACES + TIMES + FUNCTION

VOWELS = "aeiou"
CONSONANTS = "bdfgklmnprstvz"
# One letter per phoneme in every script, so a word is the same stem in any script.
SCRIPTS = {
    "Latn": VOWELS + CONSONANTS,
    "Cyrl": "аеиоубдфгклмнпрствз",
    "Grek": "αειουβδφγκλμνπρστωζ",
    "Geor": "აეიოუბდფგკლმნპრსტვზ",
    "Armn": "աեիուբդֆգկլմնպրստվզ",
}
# Sound changes a language may apply to inherited stems.
SOUND_CHANGES = (("p", "b"), ("t", "d"), ("k", "g"), ("s", "z"), ("f", "v"), ("m", "n"), ("l", "r"),
                 ("a", "o"), ("e", "i"), ("o", "u"), ("i", "e"), ("u", "o"))
# Slot order of a full sentence: M marker, T time, S subject, V verb, O object, P place.
TEMPLATES = {"SVO": "M T S V O P", "SOV": "T S P O V M", "VSO": "M V S O P T"}
SPLITS = ("train", "validation", "test")


@dataclasses.dataclass(frozen=True)
class LanguageSpec:
    """Typology of one synthetic language (its words come from the seed)."""

    name: str
    iso3: str  # ISO 639-3 reserves qaa-qtz for local use
    family: str
    script: str
    order: str  # "SVO", "SOV" or "VSO"
    adjective_first: bool
    plural: str  # "suffix" or "prefix"
    labeled: bool  # has labeled summarization training data


SPECS = (
    LanguageSpec("syn_en", "qaa", "Westic", "Latn", "SVO", True, "suffix", True),
    LanguageSpec("syn_wes", "qab", "Westic", "Latn", "SVO", False, "suffix", False),
    LanguageSpec("syn_mid", "qac", "Midic", "Cyrl", "SOV", True, "suffix", True),
    LanguageSpec("syn_mod", "qad", "Midic", "Cyrl", "SOV", False, "suffix", False),
    LanguageSpec("syn_eas", "qae", "Eastic", "Grek", "VSO", False, "prefix", True),
    LanguageSpec("syn_eos", "qaf", "Eastic", "Geor", "VSO", False, "prefix", False),
)


@dataclasses.dataclass(frozen=True)
class Event:
    """One meaning: an agent acts on ``count`` objects, optionally with attributes, place, time."""

    agent: str
    verb: str
    obj: str
    count: int = 1
    agent_attr: str | None = None
    obj_attr: str | None = None
    place: str | None = None
    time: str | None = None
    marked: bool = False  # the article's important event

    def compressed(self) -> Event:
        """The summary's meaning: attributes, time and marker dropped; count and place kept."""
        return Event(self.agent, self.verb, self.obj, self.count, place=self.place)


@dataclasses.dataclass(frozen=True)
class Article:
    """Events of one article; ``events[key]`` is the marked one."""

    events: tuple[Event, ...]
    key: int

    def summary_event(self) -> Event:
        """The task: the marked event, compressed. Language plays no part."""
        return self.events[self.key].compressed()


def to_language(spec: LanguageSpec) -> languages.Language:
    """The ``languages.Language`` record of a synthetic language."""
    return languages.Language(name=spec.name, iso1=None, iso3=spec.iso3, bcp47=f"{spec.iso3}-{spec.script}",
                              family=spec.family, genus=spec.family, script=spec.script)


def transliterate(text: str, script: str) -> str:
    """Writes internal Latin-letter text in ``script`` (letter by letter)."""
    return text.translate(str.maketrans(SCRIPTS["Latn"], SCRIPTS[script]))


def _fresh_stem(rng: np.random.Generator, syllables: tuple[int, int]) -> str:
    """A random stem of CV syllables, sometimes closed by a consonant."""
    n = int(rng.integers(syllables[0], syllables[1] + 1))
    stem = "".join(rng.choice(list(CONSONANTS)) + rng.choice(list(VOWELS)) for _ in range(n))
    return str(stem + (rng.choice(list(CONSONANTS)) if rng.random() < 0.3 else ""))


def _shape(concept: str) -> tuple[int, int]:
    """Syllable counts: short grammatical morphemes, longer content words."""
    if concept in AFFIXES:
        return (1, 1)
    return (1, 2) if concept in FUNCTION else (2, 3)


def _proto_lexicon(rng: np.random.Generator) -> dict[str, str]:
    """A family's ancestral stems: unique random forms for all concepts."""
    lexicon: dict[str, str] = {}
    for concept in CONCEPTS:
        stem = _fresh_stem(rng, _shape(concept))
        while stem in lexicon.values():
            stem = _fresh_stem(rng, _shape(concept))
        lexicon[concept] = stem
    return lexicon


def _derive_lexicon(proto: dict[str, str], rng: np.random.Generator, retention: float) -> dict[str, str]:
    """A daughter language: inherited stems with sound changes, the rest replaced by new stems."""
    picks = rng.choice(len(SOUND_CHANGES), size=2, replace=False)
    rules = str.maketrans({SOUND_CHANGES[i][0]: SOUND_CHANGES[i][1] for i in picks})
    lexicon: dict[str, str] = {}
    for concept in CONCEPTS:
        inherited = rng.random() < retention
        stem = proto[concept].translate(rules) if inherited else _fresh_stem(rng, _shape(concept))
        while stem in lexicon.values():  # a merger with another word: replace it
            stem = _fresh_stem(rng, _shape(concept))
        lexicon[concept] = stem
    return lexicon


def _distinct_syllables(rng: np.random.Generator, n: int) -> list[str]:
    """``n`` different CV syllables."""
    syllables = [c + v for c in CONSONANTS for v in VOWELS]
    return [syllables[i] for i in rng.choice(len(syllables), size=n, replace=False)]


def _random_event(rng: np.random.Generator, marked: bool) -> Event:
    """A random meaning; optional parts appear independently."""
    def maybe(options, p):
        """One of ``options`` with probability ``p``, else None."""
        return str(rng.choice(options)) if rng.random() < p else None
    count = int(rng.choice([1, 1, 1] + [int(n) for n in NUMBERS]))
    return Event(agent=str(rng.choice(AGENTS)), verb=str(rng.choice(VERBS)), obj=str(rng.choice(OBJECTS)),
                 count=count, agent_attr=maybe(ATTRIBUTES, 0.3), obj_attr=maybe(ATTRIBUTES, 0.4),
                 place=maybe(PLACES, 0.7), time=maybe(TIMES, 0.6), marked=marked)


def _random_article(rng: np.random.Generator) -> Article:
    """3-6 events, one marked; distractors often share its agent or object."""
    n = int(rng.integers(3, 7))
    key = int(rng.integers(n))
    main = _random_event(rng, marked=True)
    events = []
    for i in range(n):
        if i == key:
            events.append(main)
            continue
        other = _random_event(rng, marked=False)
        if rng.random() < 0.5:
            other = dataclasses.replace(other, agent=main.agent)
        if rng.random() < 0.3:
            other = dataclasses.replace(other, obj=main.obj)
        events.append(other)
    return Article(tuple(events), key)


class World:
    """The synthetic world of a seed: languages, lexicons, unlabeled text and summarization data.

    Args:
      seed: fixes every word form and every example.
      stem_retention: share of stems a language inherits from its family's ancestor.
      register: add the languages to ``peft_jax.languages`` (so ``resolve("syn_en")`` works).
    """

    def __init__(self, seed: int = 0, *, stem_retention: float = 0.85, register: bool = True):
        if not 0.0 <= stem_retention <= 1.0:
            raise ValueError(f"stem_retention must be in [0, 1], got {stem_retention}")
        self.seed = seed
        self.specs = {spec.name: spec for spec in SPECS}
        self.languages = [to_language(spec) for spec in SPECS]
        if register:
            for language in self.languages:
                languages.register(language)
        families = sorted({spec.family for spec in SPECS})
        protos = {f: _proto_lexicon(np.random.default_rng([seed, 1, i])) for i, f in enumerate(families)}
        self._lexicons = {spec.name: _derive_lexicon(protos[spec.family], np.random.default_rng([seed, 2, i]),
                                                     stem_retention) for i, spec in enumerate(SPECS)}
        endings = _distinct_syllables(np.random.default_rng([seed, 5]), len(SPECS))
        for spec, ending in zip(SPECS, endings):
            self._lexicons[spec.name]["TENSE"] = ending
        self._word_languages = self._index_words()

    # --- languages -----------------------------------------------------------------------

    def _spec(self, language: str | languages.Language) -> LanguageSpec:
        """The spec of a world language given by name, code or Language."""
        name = language.name if isinstance(language, languages.Language) else str(language)
        if name not in self.specs:
            name = languages.resolve(name).name  # accepts the iso3/BCP-47 codes too
        if name not in self.specs:
            raise ValueError(f"{name!r} is not a language of the synthetic world ({', '.join(self.specs)})")
        return self.specs[name]

    @property
    def source_language(self) -> languages.Language:
        """The labeled source language of zero-shot transfer (``syn_en``)."""
        return self.languages[0]

    @property
    def labeled_languages(self) -> list[languages.Language]:
        """Languages with summarization training labels: the source and one per other family."""
        return [lang for lang in self.languages if self.specs[lang.name].labeled]

    @property
    def target_languages(self) -> list[languages.Language]:
        """Languages with only unlabeled text and held-out validation/test sets."""
        return [lang for lang in self.languages if not self.specs[lang.name].labeled]

    def related(self, language: str | languages.Language) -> list[languages.Language]:
        """The other languages of the same family."""
        spec = self._spec(language)
        return [lang for lang in self.languages if lang.family == spec.family and lang.name != spec.name]

    def lexicon(self, language: str | languages.Language) -> dict[str, str]:
        """Concept -> written stem (``PLURAL`` and ``TENSE`` are the affixes; verbs take ``TENSE``)."""
        spec = self._spec(language)
        return {c: transliterate(w, spec.script) for c, w in self._lexicons[spec.name].items()}

    # --- rendering -----------------------------------------------------------------------

    def _noun_phrase(self, spec: LanguageSpec, noun: str, attr: str | None, count: int) -> list[str]:
        """``[number] [attribute] noun [attribute]`` with the plural affix when count > 1."""
        lex = self._lexicons[spec.name]
        word = lex[noun]
        if count > 1:
            word = word + lex["PLURAL"] if spec.plural == "suffix" else lex["PLURAL"] + word
        words = [word] if attr is None else ([lex[attr], word] if spec.adjective_first else [word, lex[attr]])
        return ([lex[str(count)]] if count > 1 else []) + words

    def render_event(self, event: Event, language: str | languages.Language) -> str:
        """One sentence expressing ``event`` in ``language``."""
        spec = self._spec(language)
        lex = self._lexicons[spec.name]
        place = []
        if event.place is not None:
            adposition = [lex["ADPOSITION"]]
            # Verb-final languages use postpositions, the others prepositions.
            place = [lex[event.place]] + adposition if spec.order == "SOV" else adposition + [lex[event.place]]
        slots = {"M": [lex["MARKER"]] if event.marked else [], "T": [lex[event.time]] if event.time else [],
                 "S": self._noun_phrase(spec, event.agent, event.agent_attr, 1), "V": [lex[event.verb] + lex["TENSE"]],
                 "O": self._noun_phrase(spec, event.obj, event.obj_attr, event.count), "P": place}
        words = [w for slot in TEMPLATES[spec.order].split() for w in slots[slot]]
        return transliterate(" ".join(words) + ".", spec.script)

    def render_article(self, article: Article, language: str | languages.Language,
                       example_id: str = "") -> dict[str, str]:
        """An XL-Sum-style example (``id, title, summary, text``) of ``article`` in ``language``."""
        spec = self._spec(language)
        main = article.events[article.key]
        title = " ".join([self._lexicons[spec.name][main.agent], self._lexicons[spec.name][main.obj]])
        return {"id": example_id, "title": transliterate(title, spec.script),
                "summary": self.render_event(article.summary_event(), spec.name),
                "text": " ".join(self.render_event(e, spec.name) for e in article.events)}

    # --- data ------------------------------------------------------------------------------

    def _rng(self, kind: int, stream: int, split: str, index: int) -> np.random.Generator:
        """An independent generator per example, so any example is built without the ones before it."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return np.random.default_rng([self.seed, kind, stream, SPLITS.index(split), index])

    def article(self, language: str | languages.Language, split: str, index: int) -> Article:
        """The meaning of example ``index``; validation/test articles are parallel across languages."""
        # Training streams differ per language; held-out sets are the same articles in every
        # language, so scores across languages compare languages, not contents.
        stream = [s.name for s in SPECS].index(self._spec(language).name) if split == "train" else len(SPECS)
        return _random_article(self._rng(3, stream, split, index))

    def summarization(self, language: str | languages.Language, split: str, n: int) -> list[dict[str, str]]:
        """The first ``n`` summarization examples of a split (a prefix of any larger ``n``).

        Raises:
          ValueError: training labels are asked for a target language.
        """
        spec = self._spec(language)
        if split == "train" and not spec.labeled:
            raise ValueError(f"{spec.name} is a target language without training labels; labeled languages: "
                             f"{', '.join(lang.name for lang in self.labeled_languages)}")
        return [self.render_article(self.article(spec.name, split, i), spec.name, f"{spec.name}-{split}-{i:06d}")
                for i in range(n)]

    def unlabeled(self, language: str | languages.Language, n: int, split: str = "train") -> list[str]:
        """``n`` paragraphs of 1-4 random sentences (about a fifth of them marked)."""
        spec = self._spec(language)
        stream = [s.name for s in SPECS].index(spec.name)
        out = []
        for i in range(n):
            rng = self._rng(4, stream, split, i)
            events = [_random_event(rng, marked=rng.random() < 0.2) for _ in range(int(rng.integers(1, 5)))]
            out.append(" ".join(self.render_event(e, spec.name) for e in events))
        return out

    # --- language identification -------------------------------------------------------------

    def _index_words(self) -> dict[str, set[str]]:
        """Written word form -> languages that have it (plural forms included)."""
        index: dict[str, set[str]] = {}
        for spec in SPECS:
            lex = self._lexicons[spec.name]
            forms = [w for c, w in lex.items() if c not in AFFIXES and c not in VERBS]
            forms += [lex[v] + lex["TENSE"] for v in VERBS]
            forms += [w + lex["PLURAL"] if spec.plural == "suffix" else lex["PLURAL"] + w
                      for w in (lex[o] for o in OBJECTS)]
            for form in forms:
                index.setdefault(transliterate(form, spec.script), set()).add(spec.name)
        return index

    def identify(self, text: str) -> str | None:
        """The language whose vocabulary covers most words of ``text`` (None if no word is known).

        Ties go to the language with more words no other language has.
        """
        scores = {spec.name: [0, 0] for spec in SPECS}
        for token in text.translate(str.maketrans("", "", string.punctuation)).split():
            owners = self._word_languages.get(token, ())
            for name in owners:
                scores[name][0] += 1
                scores[name][1] += len(owners) == 1
        best = max(scores, key=lambda name: tuple(scores[name]))
        return best if scores[best][0] > 0 else None

    # --- files -------------------------------------------------------------------------------

    def write_xlsum_layout(self, directory: str | os.PathLike, n_train: int = 1000, n_validation: int = 100,
                           n_test: int = 100) -> list[pathlib.Path]:
        """Writes ``<name>_{train,val,test}.jsonl`` like the XL-Sum release (train for labeled languages)."""
        root = pathlib.Path(directory)
        root.mkdir(parents=True, exist_ok=True)
        written = []
        for spec in SPECS:
            sizes = {"train": n_train if spec.labeled else 0, "validation": n_validation, "test": n_test}
            for split, n in sizes.items():
                if n <= 0:
                    continue
                path = root / f"{spec.name}_{'val' if split == 'validation' else split}.jsonl"
                lines = (json.dumps(ex, ensure_ascii=False) for ex in self.summarization(spec.name, split, n))
                path.write_text("\n".join(lines) + "\n", encoding="utf-8")
                written.append(path)
        return written

    def write_unlabeled(self, directory: str | os.PathLike, n: int, split: str = "train",
                        names: Sequence[str] | None = None) -> list[pathlib.Path]:
        """Writes ``<name>_<split>.txt`` with ``n`` paragraphs per language, one per line."""
        root = pathlib.Path(directory)
        root.mkdir(parents=True, exist_ok=True)
        written = []
        for name in names or [spec.name for spec in SPECS]:
            spec = self._spec(name)
            path = root / f"{spec.name}_{split}.txt"
            path.write_text("\n".join(self.unlabeled(spec.name, n, split)) + "\n", encoding="utf-8")
            written.append(path)
        return written
