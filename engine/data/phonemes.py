"""espeak-ng's English phoneme mnemonics, sorted into the classes the mouth cares about.

espeak reports phonemes in its own ASCII mnemonics (``p``, ``b``, ``tS``, ``aI``, ``u:``,
``@L``, ``_:`` ...), see espeak-ng's ``phsource/ph_english*``. This module is the one place that
knows them: `viseme_class` sorts a mnemonic into a `Viseme` class (what the lips, jaw and tongue
do), `VOWELS` gives each vowel's shape (jaw opening, rounding, spreading; diphthongs glide
between two shapes), and `is_bilabial` is what lip-sync evaluation uses to find the phones
where the lips must close.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Viseme(Enum):
    SILENCE = "silence"  # pauses: _ (short), _: (clause), _! (glottal break)
    BILABIAL = "bilabial"  # p b m: lips closed
    LABIODENTAL = "labiodental"  # f v: lower lip to the upper teeth
    DENTAL = "dental"  # th (T D, Caribbean t[): tongue tip between the teeth
    ALVEOLAR = "alveolar"  # t d n l and flaps: jaw nearly closed, lips free
    SIBILANT = "sibilant"  # s z: teeth close, lips a little spread
    POSTALVEOLAR = "postalveolar"  # sh zh ch j: lips protruded and funnelled
    VELAR = "velar"  # k g ng: lips free, jaw a little open
    GLOTTAL = "glottal"  # h: takes the next vowel's shape
    RHOTIC = "rhotic"  # r: lips slightly rounded
    LABIOVELAR = "labiovelar"  # w: lips strongly rounded
    PALATAL = "palatal"  # j (y): lips spread
    VOWEL = "vowel"
    MODIFIER = "modifier"  # ';' and similar marks: no articulation of their own


BILABIALS = frozenset({"p", "b", "m", "m-", "p#", "b#"})
LABIODENTALS = frozenset({"f", "v"})
DENTALS = frozenset({"T", "D", "t[", "d["})
ALVEOLARS = frozenset({"t", "d", "n", "l", "t#", "d#", "t2", "d2", "n-", "l/", "l-", "?"})
SIBILANTS = frozenset({"s", "z", "z#", "s2"})
POSTALVEOLARS = frozenset({"S", "Z", "tS", "dZ", "S;", "Z;"})
VELARS = frozenset({"k", "g", "N", "x", "k#", "g#"})
GLOTTALS = frozenset({"h", "h#"})
RHOTICS = frozenset({"r", "r-", "r/", "*"})
LABIOVELARS = frozenset({"w", "w#", "W"})
PALATALS = frozenset({"j", "C", "j/"})
SILENCES = frozenset({"_", "_:", "_!", "_^_", "||", "|"})
MODIFIERS = frozenset({";", "#", "'", ",", "%", "="})


@dataclass(frozen=True)
class VowelShape:
    """A mouth shape: jaw opening, lip rounding, lip spreading, each about 0..1."""

    jaw: float
    round: float = 0.0
    spread: float = 0.0


@dataclass(frozen=True)
class Vowel:
    start: VowelShape
    end: VowelShape | None = None  # diphthongs glide from start to end

    @property
    def is_diphthong(self) -> bool:
        return self.end is not None


def _v(jaw: float, rnd: float = 0.0, spread: float = 0.0) -> VowelShape:
    return VowelShape(jaw, rnd, spread)


# Jaw opening follows vowel height (open a/A: widest, close i:/u: least); rounding for the
# back rounded vowels; spreading for the front close ones.
VOWELS: dict[str, Vowel] = {
    "a": Vowel(_v(0.55, spread=0.35)),
    "a#": Vowel(_v(0.45, spread=0.15)),
    "aa": Vowel(_v(0.60)),
    "A:": Vowel(_v(0.60)),
    "A@": Vowel(_v(0.55), _v(0.35, rnd=0.2)),
    "0": Vowel(_v(0.50, rnd=0.35)),
    "O": Vowel(_v(0.45, rnd=0.5)),
    "O:": Vowel(_v(0.42, rnd=0.6)),
    "O2": Vowel(_v(0.42, rnd=0.55)),
    "O@": Vowel(_v(0.42, rnd=0.55), _v(0.25, rnd=0.3)),
    "o@": Vowel(_v(0.35, rnd=0.6), _v(0.25, rnd=0.3)),
    "OI": Vowel(_v(0.40, rnd=0.6), _v(0.15, spread=0.5)),
    "V": Vowel(_v(0.45)),
    "VR": Vowel(_v(0.40, rnd=0.15)),
    "U": Vowel(_v(0.20, rnd=0.65)),
    "U@": Vowel(_v(0.20, rnd=0.6), _v(0.30, rnd=0.1)),
    "u:": Vowel(_v(0.15, rnd=0.95)),
    "@": Vowel(_v(0.25)),
    "@2": Vowel(_v(0.22)),
    "@5": Vowel(_v(0.20, rnd=0.3)),
    "@L": Vowel(_v(0.18)),
    "@-": Vowel(_v(0.20)),
    "3": Vowel(_v(0.22, rnd=0.2)),
    "3:": Vowel(_v(0.30, rnd=0.2)),
    "IR": Vowel(_v(0.18, spread=0.3), _v(0.20, rnd=0.2)),
    "E": Vowel(_v(0.40, spread=0.35)),
    "e": Vowel(_v(0.35, spread=0.4)),
    "e@": Vowel(_v(0.40, spread=0.3), _v(0.30)),
    "eI": Vowel(_v(0.35, spread=0.4), _v(0.15, spread=0.6)),
    "I": Vowel(_v(0.20, spread=0.45)),
    "I2": Vowel(_v(0.18, spread=0.35)),
    "I#": Vowel(_v(0.18, spread=0.3)),
    "i": Vowel(_v(0.15, spread=0.6)),
    "i:": Vowel(_v(0.13, spread=0.75)),
    "i@": Vowel(_v(0.15, spread=0.6), _v(0.30)),
    "i@3": Vowel(_v(0.15, spread=0.6), _v(0.25, rnd=0.2)),
    "aI": Vowel(_v(0.60, spread=0.1), _v(0.15, spread=0.5)),
    "aI2": Vowel(_v(0.55, spread=0.1), _v(0.15, spread=0.5)),
    "aI@": Vowel(_v(0.60, spread=0.1), _v(0.25, spread=0.2)),
    "aI3": Vowel(_v(0.60, spread=0.1), _v(0.25, rnd=0.2)),
    "aU": Vowel(_v(0.60), _v(0.15, rnd=0.8)),
    "aU@": Vowel(_v(0.60), _v(0.25, rnd=0.4)),
    "oU": Vowel(_v(0.35, rnd=0.55), _v(0.15, rnd=0.9)),
    "o:": Vowel(_v(0.35, rnd=0.7)),
}
_DEFAULT_VOWEL = Vowel(_v(0.30))

_CLASSES: tuple[tuple[frozenset[str], Viseme], ...] = (
    (BILABIALS, Viseme.BILABIAL),
    (LABIODENTALS, Viseme.LABIODENTAL),
    (DENTALS, Viseme.DENTAL),
    (ALVEOLARS, Viseme.ALVEOLAR),
    (SIBILANTS, Viseme.SIBILANT),
    (POSTALVEOLARS, Viseme.POSTALVEOLAR),
    (VELARS, Viseme.VELAR),
    (GLOTTALS, Viseme.GLOTTAL),
    (RHOTICS, Viseme.RHOTIC),
    (LABIOVELARS, Viseme.LABIOVELAR),
    (PALATALS, Viseme.PALATAL),
    (SILENCES, Viseme.SILENCE),
    (MODIFIERS, Viseme.MODIFIER),
)
_VOWEL_LETTERS = set("aeiouAEIOUV@03")
# Unlisted mnemonics (other accents, rare words) fall back on their first letter.
_BY_LETTER: dict[str, Viseme] = {
    "p": Viseme.BILABIAL, "b": Viseme.BILABIAL, "m": Viseme.BILABIAL,
    "f": Viseme.LABIODENTAL, "v": Viseme.LABIODENTAL, "T": Viseme.DENTAL, "D": Viseme.DENTAL,
    "t": Viseme.ALVEOLAR, "d": Viseme.ALVEOLAR, "n": Viseme.ALVEOLAR, "l": Viseme.ALVEOLAR,
    "s": Viseme.SIBILANT, "z": Viseme.SIBILANT, "S": Viseme.POSTALVEOLAR,
    "Z": Viseme.POSTALVEOLAR, "k": Viseme.VELAR, "g": Viseme.VELAR, "N": Viseme.VELAR,
    "x": Viseme.VELAR, "h": Viseme.GLOTTAL, "r": Viseme.RHOTIC, "w": Viseme.LABIOVELAR,
    "j": Viseme.PALATAL, "_": Viseme.SILENCE,
}  # fmt: skip


def is_known(symbol: str) -> bool:
    """Whether the mnemonic is listed here (rather than classified by its first letter)."""
    return symbol in VOWELS or any(symbol in members for members, _ in _CLASSES)


def viseme_class(symbol: str) -> Viseme:
    """The `Viseme` class of an espeak mnemonic (unknown ones by their first letter)."""
    if symbol in VOWELS:
        return Viseme.VOWEL
    for members, cls in _CLASSES:
        if symbol in members:
            return cls
    if not symbol:
        return Viseme.MODIFIER
    if symbol[0] in _VOWEL_LETTERS:
        return Viseme.VOWEL
    return _BY_LETTER.get(symbol[0], Viseme.ALVEOLAR)


def vowel_shape(symbol: str) -> Vowel:
    """The shape of a vowel mnemonic (a mid vowel for unlisted ones)."""
    return VOWELS.get(symbol, _DEFAULT_VOWEL)


def is_bilabial(symbol: str) -> bool:
    """True for p, b, m (and their espeak variants): the phones where the lips must close."""
    return symbol in BILABIALS


def is_vowel(symbol: str) -> bool:
    return viseme_class(symbol) is Viseme.VOWEL


def is_silence(symbol: str) -> bool:
    return viseme_class(symbol) is Viseme.SILENCE
