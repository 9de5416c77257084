"""The Turkish stemmer XL-Sum's ROUGE uses: the algorithm of the ``TurkishStemmer`` package.

That package (otuncelli/turkish-stemmer-python, Apache-2.0, Copyright 2015 Osman Tunçelli; a
port of the Java stemmer of Can et al.'s "Information Retrieval on Turkish Texts") strips
suffixes with three finite-state machines, nominal-verb, noun and derivational, applied in
that order to the word and to every stem found so far; of all stems, after the last-consonant
rule, it keeps the one closest to four letters. The suffix tables, state machines and word
lists below are the package's. One difference: where several stems tie, the package returns
whichever its ``set`` lists first, which changes between Python processes (string hashing is
salted); here ties go to the alphabetically first stem.
"""

from __future__ import annotations

import collections
import dataclasses

ALPHABET = frozenset("abcçdefgğhıijklmnoöprsştuüvyz")
VOWELS = frozenset("üiıueöao")
CONSONANTS = frozenset("bcçdfgğhjklmnprsştvyz")
_ROUNDED, _AFTER_ROUNDED, _UNROUNDED = frozenset("oöuü"), frozenset("aeuü"), frozenset("iıea")
_FRONT, _BACK = frozenset("eiöü"), frozenset("ıuao")
_LAST_CONSONANT = {"b": "p", "c": "ç", "d": "t", "ğ": "k"}
AVERAGE_STEM_SIZE = 4

# The package's word lists (resources/*.txt).
PROTECTED_WORDS = frozenset("""
abiye adın adana akılsız alaska alet ağda ağız alarm altınbaşak altınyıldız anakucağı anasayfa
anime antifriz araba ardeşen armanı aroma arma arsız asa askı astra asus atkı ayakkabı aynı ayı
banka başka batık bayı belge bellona benten benzin beşinci bilgi bitki boyut branda bütün buzlu
çağrı camsız çanta çarşı ceyiz çıkış cımbiz dalga damla derece dişli düğün ege elbise fendi
filtre fiyat forma gazete gemi görüntü igne ince internet iyi kayısı kama katı kötü kumanda lamba
lazım litre mağaza magaza makara makine malzeme mana marka masa maskara mine mini nine numara
odun oyun ölçü örgü öykü özen parça perde pompa pırlanta raket ranza şamdan şapka şifre sunu
soyad tabaka takım talımat tarla tasma törpü tozlu tüplü uçurtma üfleme ürün ütü uygun uzatma
uzun vana yağlı yapma yardım yasa yıldız zayıflama zemin
""".split())
VOWEL_HARMONY_EXCEPTIONS = frozenset(
    "alkoller değerın generali generale projektörlar saatler tabletlar tersyüz yaninda yani".split())
LAST_CONSONANT_EXCEPTIONS = frozenset("ad at ked".split())
AVERAGE_STEM_SIZE_EXCEPTIONS = frozenset("""
al am aparat ara bilet bisiklet bulut diyet ev es fiyat fırsat general git gıt iç ip internet
iyi kağıt kartuş katı kot kötü kumanda lamba mağaza magaza makara makine marka maskara ne otomat
palet perde raket ranza robot sepet servis soyad su tabaka tablet takım talımat tanıt tarla
tasma tenis törpü uç uygun var yasa
""".split())


@dataclasses.dataclass(frozen=True)
class Suffix:
    """A suffix: its surface forms, the letter that may join it to the stem, vowel harmony."""
    forms: tuple[str, ...]
    joining: frozenset[str] = frozenset()
    harmony: bool = True


def _suffix(forms: str, joining: str = "", harmony: bool = True) -> Suffix:
    return Suffix(tuple(forms.split("|")), frozenset(joining.split("|")) - {""}, harmony)


# Nominal-verb suffixes, in the order they are tried.
_NV = {"S11": _suffix("casına|çasına|cesine|çesine"), "S4": _suffix("sınız|siniz|sunuz|sünüz"),
       "S14": _suffix("muş|miş|müş|mış", "y"), "S15": _suffix("ken", "y"),
       "S2": _suffix("sın|sin|sun|sün"), "S5": _suffix("lar|ler"), "S9": _suffix("nız|niz|nuz|nüz"),
       "S10": _suffix("tır|tir|tur|tür|dır|dir|dur|dür"), "S3": _suffix("ız|iz|uz|üz", "y"),
       "S1": _suffix("ım|im|um|üm", "y"), "S12": _suffix("dı|di|du|dü|tı|ti|tu|tü", "y"),
       "S13": _suffix("sa|se", "y"), "S6": _suffix("m"), "S7": _suffix("n"), "S8": _suffix("k")}

# Noun suffixes, in the order they are tried.
_NOUN = {"S16": _suffix("ndan|ntan|nden|nten"), "S7": _suffix("ları|leri"),
         "S3": _suffix("mız|miz|muz|müz", "ı|i|u|ü"), "S5": _suffix("nız|niz|nuz|nüz", "ı|i|u|ü"),
         "S1": _suffix("lar|ler"), "S14": _suffix("nta|nte|nda|nde"), "S15": _suffix("dan|tan|den|ten"),
         "S17": _suffix("la|le", "y"), "S10": _suffix("ın|in|un|ün", "n"), "S19": _suffix("ca|ce", "n"),
         "S4": _suffix("ın|in|un|ün"), "S9": _suffix("nı|ni|nu|nü"), "S12": _suffix("na|ne"),
         "S13": _suffix("da|de|ta|te"), "S18": _suffix("ki", harmony=False),
         "S2": _suffix("m", "ı|i|u|ü"), "S6": _suffix("ı|i|u|ü", "s"), "S8": _suffix("ı|i|u|ü", "y"),
         "S11": _suffix("a|e", "y")}

_DERIVATIONAL = {"S1": _suffix("lı|li|lu|lü")}


@dataclasses.dataclass(frozen=True)
class State:
    """A state: whether a stem reaching it is final, and its (suffix, next state) edges in order."""
    name: str
    final: bool
    edges: tuple[tuple[Suffix, str], ...]


def _machine(suffixes: dict[str, Suffix], table: dict[str, tuple[bool, str]]) -> dict[str, State]:
    """States from ``{state: (final, "suffix>next suffix>next ...")}``; "A" is the start."""
    return {name: State(name, final, tuple((suffixes[s], nxt) for s, nxt in
                                           (edge.split(">") for edge in edges.split())))
            for name, (final, edges) in table.items()}


_NOMINAL_VERB_MACHINE = _machine(_NV, {
    "A": (False, "S11>H S4>B S14>F S15>F S2>B S5>C S9>D S10>E S3>B S1>B S12>F S13>F S6>D S7>D S8>D"),
    "B": (True, "S14>F"), "C": (True, "S10>F S12>F S13>F S14>F"), "D": (False, "S12>F S13>F"),
    "E": (True, "S1>G S2>G S3>G S4>G S5>G S14>F"), "F": (True, ""), "G": (False, "S14>F"),
    "H": (False, "S1>G S2>G S3>G S4>G S5>G S14>F"),
})

_NOUN_MACHINE = _machine(_NOUN, {
    "A": (True, "S16>C S7>K S3>H S5>H S1>L S14>F S15>G S17>E S10>E S19>M S4>H S9>C S12>F S13>B "
                "S18>D S2>H S6>H S8>B S11>B"),
    "B": (True, "S1>L S2>H S3>H S4>H S5>H"), "C": (False, "S6>H S7>K"),
    "D": (False, "S10>E S13>B S14>F"), "E": (True, "S1>L S2>H S3>H S4>H S5>H S6>H S7>K S18>D"),
    "F": (False, "S6>H S7>K S18>D"), "G": (True, "S1>L S2>H S3>H S4>H S5>H S18>D"),
    "H": (True, "S1>L"), "K": (True, ""), "L": (True, "S18>D"),
    # S6 twice, as the package lists it: a matching -(s)U is tried twice from here.
    "M": (True, "S1>L S2>H S3>H S4>H S5>H S6>H S6>H S7>K"),
})

_DERIVATIONAL_MACHINE = _machine(_DERIVATIONAL, {"A": (False, "S1>B"), "B": (True, "")})


def syllables(word: str) -> int:
    """The number of vowels."""
    return sum(c in VOWELS for c in word)


def has_vowel_harmony(word: str) -> bool:
    """Whether the last two vowels agree in roundness and frontness (True with fewer than two)."""
    vowels = [c for c in word if c in VOWELS]
    if len(vowels) < 2:
        return True
    first, second = vowels[-2], vowels[-1]
    round_ok = (first in _UNROUNDED and second in _UNROUNDED) or (first in _ROUNDED and second in _AFTER_ROUNDED)
    front_ok = (first in _FRONT and second in _FRONT) or (first in _BACK and second in _BACK)
    return round_ok and front_ok


class TurkishStemmer:
    """``TurkishStemmer().stem(word)`` as the ``TurkishStemmer`` package computes it (callable too)."""

    def __call__(self, word: str) -> str:
        return self.stem(word)

    def stem(self, word: str) -> str:
        """The chosen stem of ``word``; the word itself when it is not stemmed."""
        if (not word or any(c not in ALPHABET for c in word) or word in PROTECTED_WORDS
                or syllables(word) < 2):
            return word
        stems: set[str] = set()
        for machine in (_NOMINAL_VERB_MACHINE, _NOUN_MACHINE, _DERIVATIONAL_MACHINE):
            # Each machine runs on the word and on every stem the earlier machines found.
            for candidate in stems | {word}:
                _run(machine, candidate, stems)
        return _choose(stems - {word}, word)


def _strip(word: str, suffix: Suffix) -> str:
    """One suffix off ``word`` (with its joining letter), or ``word`` when that is not allowed."""
    stemmed = word
    allowed = word not in PROTECTED_WORDS and (
        not suffix.harmony or has_vowel_harmony(word) or word in VOWEL_HARMONY_EXCEPTIONS)
    if allowed and word.endswith(suffix.forms):
        stemmed = word[:-len(next(f for f in suffix.forms if word.endswith(f)))]
    # The joining letter is looked at even when no suffix came off (the package does so too).
    if suffix.joining and stemmed[-1:] in suffix.joining:
        previous = stemmed[-2:-1]
        joins = previous and (previous in CONSONANTS if stemmed[-1] in VOWELS else previous in VOWELS)
        stemmed = stemmed[:-1] if joins else word
    return stemmed


@dataclasses.dataclass(eq=False)
class _Transition:
    start: State
    next: State
    word: str
    suffix: Suffix
    marked: bool = False


def _edges(machine: dict[str, State], state: State, word: str) -> list[_Transition]:
    """The transitions out of ``state`` whose suffix ends ``word``, in the state's order."""
    return [_Transition(state, machine[nxt], word, suffix)
            for suffix, nxt in state.edges if word.endswith(suffix.forms)]


def _run(machine: dict[str, State], word: str, stems: set[str]) -> None:
    """Adds to ``stems`` every stem ``machine`` reaches from ``word`` (the package's queue order)."""
    queue = collections.deque(_edges(machine, machine["A"], word))
    while queue:
        step = queue.popleft()
        stem = _strip(step.word, step.suffix)
        if stem == step.word:
            continue
        if step.next.final:
            # A final stem: drop the other ways along the same edge and those marked as alternatives.
            for other in list(queue):
                if (other.start is step.start and other.next is step.next) or other.marked:
                    queue.remove(other)
            stems.add(stem)
        else:
            for other in queue:
                if other.start is step.start and other.next is step.next:
                    other.marked = True
        # New transitions are never marked: the package's Transition ignores its `marked` argument.
        queue.extend(_edges(machine, step.next, stem))


def _choose(stems: set[str], word: str) -> str:
    """The last-consonant rule on every stem with a vowel, then the stem closest to 4 letters."""
    finals = {s if s in LAST_CONSONANT_EXCEPTIONS else s[:-1] + _LAST_CONSONANT.get(s[-1], s[-1])
              for s in stems if syllables(s) > 0}
    if not finals:
        return word
    listed = sorted(s for s in finals if s in AVERAGE_STEM_SIZE_EXCEPTIONS)
    if listed:
        return listed[0]
    return min(finals, key=lambda s: (abs(len(s) - AVERAGE_STEM_SIZE), len(s), s))
