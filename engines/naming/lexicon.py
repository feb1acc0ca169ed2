"""Word tables built from the vocabulary, and repair of words the tables do not know.

A word is *known* when it is a synonym word, an alias key (``words``), a laterality,
modifier, helper, target or noise word. An unknown word is repaired, in this order: plural
``-s``/``-es`` of a known word, a split into known words ("lcochlea" -> l + cochlea), one or
two typos (Damerau-Levenshtein, unique best), a prefix of one known word ("submandib"), a
consonant abbreviation of one known word ("submndblr"), and a known word with a short
unknown head or tail ("brainstemsjj" -> brainstem + initials). What stays unknown is either
initials (up to three letters, ignored) or an unknown word (the renamer then abstains).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from functools import lru_cache

from engines.naming.vocabulary import VocabularyModel

logger = logging.getLogger(__name__)

_NUMBER = re.compile(r"^\d+(?:\.\d+)?$")
_UNITS = {"mm": "mm", "cm": "cm", "gy": "gy", "cgy": "cgy"}


class Kind(Enum):
    """What a canonical word means to the matcher."""

    ANATOMY = "anatomy"
    LEFT = "left"
    RIGHT = "right"
    BOTH = "both"
    RELATIVE = "relative"
    PRV = "prv"
    OPT = "opt"
    HELPER = "helper"
    TARGET = "target"
    NOISE = "noise"
    NUMBER = "number"
    UNIT = "unit"
    INITIALS = "initials"
    UNKNOWN = "unknown"


SIDE_KINDS = (Kind.LEFT, Kind.RIGHT)


@dataclass(frozen=True)
class Word:
    """A canonical word with its kind and how it was obtained from the raw text."""

    text: str
    kind: Kind
    repair: str = ""  # "", "plural", "split", "typo", "prefix", "abbrev", "affix"
    weak: bool = False  # a side letter glued to initials ("lag" = l + ag)
    plural: bool = False


@dataclass
class Lexicon:
    """Known words and their kinds; ``repair`` turns any raw piece into canonical words."""

    aliases: dict[str, tuple[str, ...]] = field(default_factory=dict)
    kinds: dict[str, Kind] = field(default_factory=dict)
    anatomy: set[str] = field(default_factory=set)
    fuzzy_targets: dict[int, list[tuple[str, frozenset[str]]]] = field(default_factory=dict)
    prefix_words: list[str] = field(default_factory=list)

    @classmethod
    def from_model(cls, model: VocabularyModel, synonym_words: Iterable[str]) -> Lexicon:
        lex = cls()
        lex._add_specials(model)
        for word in synonym_words:
            lex._add(word, Kind.ANATOMY)
        for word in model.qualifier_words:
            lex._add(word, Kind.ANATOMY)
        for variant, canonical in model.words.items():
            lex.aliases[variant] = tuple(canonical.split())
            for part in canonical.split():
                lex._add(part, Kind.ANATOMY)
        for word in [*model.target_levels, *model.target_classifiers]:
            if len(word) > 1:
                lex.kinds.setdefault(word, Kind.HELPER)
        lex._index_fuzzy()
        return lex

    def _add_specials(self, model: VocabularyModel) -> None:
        side = model.laterality
        groups: list[tuple[Iterable[str], Kind]] = [
            (side.left, Kind.LEFT),
            (side.right, Kind.RIGHT),
            (side.both, Kind.BOTH),
            (side.relative, Kind.RELATIVE),
            (model.prv_words, Kind.PRV),
            (model.opt_words, Kind.OPT),
            (model.helper_words, Kind.HELPER),
            (model.target_words, Kind.TARGET),
            (model.noise_words, Kind.NOISE),
        ]
        for words, kind in groups:
            for word in words:
                self.kinds.setdefault(word, kind)

    def _add(self, word: str, kind: Kind) -> None:
        if word in _UNITS or _NUMBER.match(word):
            return
        if word not in self.kinds:
            self.kinds[word] = kind
        if self.kinds[word] is Kind.ANATOMY:
            self.anatomy.add(word)

    def _index_fuzzy(self) -> None:
        words = [w for w in set(self.kinds) | set(self.aliases) if len(w) >= 5 and w.isalpha()]
        for word in sorted(words):
            self.fuzzy_targets.setdefault(len(word), []).append((word, frozenset(word)))
        self.prefix_words = sorted(w for w in self.anatomy | set(self.aliases) if w.isalpha())

    # -- lookup ----------------------------------------------------------------------

    def known(self, word: str) -> bool:
        return word in self.kinds or word in self.aliases

    def canonical(self, word: str, repair: str = "", weak: bool = False) -> list[Word]:
        """Canonical words for a known raw word (aliases may expand to several). A variant
        that is its word's regular plural (``kidneys: kidney``, ``nodes: node``) reads as a
        plural, as an unknown plural repaired to a known stem does."""
        texts = self.aliases.get(word, (word,))
        plural = any(word in (t + "s", t + "es") for t in texts)
        return [Word(t, self.kind_of(t), repair, weak, plural=plural) for t in texts]

    def kind_of(self, word: str) -> Kind:
        if word in self.kinds:
            return self.kinds[word]
        if _NUMBER.match(word):
            return Kind.NUMBER
        if word in _UNITS:
            return Kind.UNIT
        return Kind.UNKNOWN

    def repair(self, piece: str, chunk: str) -> list[Word]:
        """Canonical words for one raw piece; see the module docstring for the order."""
        return list(_repair_cached(self, piece, chunk))

    def __hash__(self) -> int:  # one lexicon per vocabulary; identity hashing for the cache
        return id(self)


@lru_cache(maxsize=65536)
def _repair_cached(lex: Lexicon, piece: str, chunk: str) -> tuple[Word, ...]:
    if lex.known(piece) or _NUMBER.match(piece) or piece in _UNITS:
        return tuple(lex.canonical(piece))
    for attempt in (_plural, _split_known, _typo, _prefix, _abbreviation, _affix):
        found = attempt(lex, piece)
        if found:
            return tuple(found)
    if len(piece) <= 3:
        return (Word(piece, Kind.INITIALS),)
    return (Word(piece, Kind.UNKNOWN),)


def _plural(lex: Lexicon, piece: str) -> list[Word]:
    for cut in (1, 2):
        stem = piece[:-cut]
        if piece.endswith("es"[-cut:]) and len(stem) >= 2 and lex.known(stem):
            return [Word(w.text, w.kind, "plural", plural=True) for w in lex.canonical(stem)]
    return []


def _split_known(lex: Lexicon, piece: str) -> list[Word]:
    """Split a glued word into known words only (fewest pieces; plural pieces allowed)."""
    if len(piece) < 3:
        return []
    parts = _segment(lex, piece)
    if not parts or len(parts) < 2:
        return []
    words: list[Word] = []
    for part in parts:
        stem = part if lex.known(part) else part[:-1]
        words.extend(lex.canonical(stem, "split"))
    return words


def _segment(lex: Lexicon, text: str) -> list[str] | None:
    """Fewest-pieces split of ``text`` into known words (pieces of 2+ letters, or l/r)."""
    best: list[list[str] | None] = [None] * (len(text) + 1)
    best[0] = []
    for end in range(1, len(text) + 1):
        for start in range(end):
            previous = best[start]
            part = text[start:end]
            if previous is None or not _segment_piece_ok(lex, part):
                continue
            candidate = [*previous, part]
            current = best[end]
            if current is None or _split_cost(candidate) < _split_cost(current):
                best[end] = candidate
    return best[len(text)]


def _split_cost(parts: list[str]) -> tuple[int, int]:
    """Fewer pieces first, then the split with the longest piece ("smg"+"l", not "sm"+"gl")."""
    return (len(parts), -max(len(p) for p in parts))


def _segment_piece_ok(lex: Lexicon, part: str) -> bool:
    if len(part) == 1:
        return lex.kind_of(part) in SIDE_KINDS
    if part.isdigit():
        return False
    return lex.known(part) or (len(part) >= 3 and part.endswith("s") and lex.known(part[:-1]))


def _typo(lex: Lexicon, piece: str) -> list[Word]:
    if len(piece) < 4 or not piece.isalpha():
        return []
    limit = 1 if len(piece) <= 6 else 2
    best: dict[str, int] = {}
    letters = frozenset(piece)
    for length in range(max(5, len(piece) - limit), len(piece) + limit + 1):
        for word, word_letters in lex.fuzzy_targets.get(length, ()):
            if len(letters ^ word_letters) > 2 * limit:  # each edit changes <= 2 letters
                continue
            distance = _damerau(piece, word, limit)
            if distance <= limit:
                best[word] = distance
    if not best:
        return []
    lowest = min(best.values())
    winners = {_concept(lex, w) for w, d in best.items() if d == lowest}
    if len(winners) != 1:
        return []
    word = next(w for w, d in best.items() if d == lowest)
    return lex.canonical(word, "typo")


def _concept(lex: Lexicon, word: str) -> str:
    return " ".join(lex.aliases.get(word, (word,)))


def _prefix(lex: Lexicon, piece: str) -> list[Word]:
    if len(piece) < 4 or not piece.isalpha():
        return []
    matches = [w for w in lex.prefix_words if len(w) > len(piece) and w.startswith(piece)]
    return _unique_concept(lex, matches, "prefix")


def _abbreviation(lex: Lexicon, piece: str) -> list[Word]:
    if len(piece) < 4 or not piece.isalpha():
        return []
    matches = [
        w
        for w in lex.prefix_words
        if len(w) > len(piece)
        and w[0] == piece[0]
        and len(piece) / len(w) >= 0.4
        and _is_subsequence(piece, w)
    ]
    return _unique_concept(lex, matches, "abbrev")


def _unique_concept(lex: Lexicon, matches: list[str], repair: str) -> list[Word]:
    concepts = {_concept(lex, w) for w in matches}
    if len(concepts) != 1:
        return []
    words = lex.canonical(sorted(matches, key=len)[0], repair)
    return words if all(w.kind is Kind.ANATOMY for w in words) else []


def _affix(lex: Lexicon, piece: str) -> list[Word]:
    """Known word(s) with unknown initials glued before (<= 2) or after (<= 3 letters)."""
    if not piece.isalpha():
        return []
    side = _weak_side(lex, piece)
    if side:
        return side
    for head, tail in _AFFIXES:
        if len(piece) - head - tail < 4:
            continue
        core = piece[head : len(piece) - tail]
        parts = [core] if lex.known(core) else (_segment(lex, core) or [])
        if parts and max(len(p) for p in parts) >= 4:
            words: list[Word] = []
            for part in parts:
                stem = part if lex.known(part) else part[:-1]
                words.extend(lex.canonical(stem, "affix"))
            return words
    return []


# (head, tail) lengths of unknown initials around a known core, shortest first
_AFFIXES = sorted(
    ((h, t) for h in range(3) for t in range(4) if h + t > 0), key=lambda ht: (sum(ht), ht[0])
)


def _weak_side(lex: Lexicon, piece: str) -> list[Word]:
    """ "lag", "rj": a side letter glued to initials; the side counts only if it fits."""
    if 2 <= len(piece) <= 4 and lex.kind_of(piece[0]) in SIDE_KINDS:
        return [Word(piece[0], lex.kind_of(piece[0]), "affix", weak=True)]
    return []


def _is_subsequence(short: str, long: str) -> bool:
    letters = iter(long)
    return all(ch in letters for ch in short)


def _damerau(a: str, b: str, limit: int) -> int:
    """Optimal-string-alignment distance, stopping early once above ``limit``."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    previous2: list[int] = []
    previous = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        current = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                current[j] = min(current[j], previous2[j - 2] + 1)
        if min(current) > limit:
            return limit + 1
        previous2, previous = previous, current
    return previous[len(b)]
