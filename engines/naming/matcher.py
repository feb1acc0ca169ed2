"""Deterministic matcher: one raw name -> a :class:`Decision` (no overrides, no LLM).

The anatomy words of a name (after repair, see :mod:`engines.naming.lexicon`) must equal one
synonym of one vocabulary structure, as a set; the structure's optional words may be there
too. Laterality picks the side of a lateral structure, PRV and margin words make a PRV name,
opt/avoid copies and version words are handled by the vocabulary's policies, and target
words go to :mod:`engines.naming.targets`. Whatever is unsure is kept (``abstain``), with the
vocabulary names the rules could not choose between as ``candidates`` for an LLM.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from itertools import combinations

from engines.naming.decision import EXACT, FUZZY, RULES, TARGET, Decision, abstain
from engines.naming.lexicon import Kind, Lexicon
from engines.naming.normalise import split_name
from engines.naming.parse import ParsedName, parse_words
from engines.naming.targets import build_target
from engines.naming.vocabulary import StructureModel, Vocabulary

logger = logging.getLogger(__name__)

_CAMEL = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+")
_OPTIONAL = re.compile(r"^\((.+)\)$")
_CONFIDENCE_FLOOR = 0.5
# words too general to show that two names are about the same organ
GENERIC_WORDS = frozenset(
    {
        "gland",
        "muscle",
        "bone",
        "nerve",
        "node",
        "ln",
        "lymph",
        "artery",
        "vein",
        "wall",
        "lobe",
        "head",
        "neck",
        "body",
        "base",
        "part",
        "small",
        "large",
        "common",
        "internal",
        "external",
        "superior",
        "inferior",
        "middle",
        "canal",
        "cavity",
        "space",
        "joint",
    }
)


@dataclass
class SynonymIndex:
    """Synonym word sets -> structures (each structure's optional words left out of its keys)."""

    keys: dict[frozenset[str], list[StructureModel]] = field(default_factory=dict)
    optional: frozenset[str] = frozenset()  # union of every structure's optional words
    by_word: dict[str, set[str]] = field(default_factory=dict)  # word -> structure names
    own_words: dict[str, frozenset[str]] = field(default_factory=dict)  # name -> its words

    def lookup(self, words: frozenset[str]) -> list[StructureModel]:
        """Structures one of whose synonyms is ``words`` (plus its own optional words)."""
        found = self.keys.get(words, [])
        if found or not words & self.optional:
            return list(found)
        core = words - self.optional
        return [s for s in self.keys.get(core, []) if words - core <= frozenset(s.optional_words)]


def phrase_variants(phrase: str) -> list[list[str]]:
    """Word lists of a synonym phrase with every combination of its (optional) words."""
    words = phrase.split()
    optional = [i for i, w in enumerate(words) if _OPTIONAL.match(w)]
    variants = []
    for size in range(len(optional) + 1):
        for dropped in combinations(optional, size):
            kept = [_OPTIONAL.sub(r"\1", w) for i, w in enumerate(words) if i not in dropped]
            variants.append(kept)
    return variants


def name_words(name: str) -> list[str]:
    """Lowercase words of a TG-263 name (``Glnd_Submand`` -> glnd, submand)."""
    return [h.lower() for part in re.split(r"[_\-]", name) for h in _CAMEL.findall(part)]


class Matcher:
    """Rules-only renamer for one vocabulary; build once, call :meth:`decide` per name."""

    def __init__(self, vocabulary: Vocabulary) -> None:
        self.vocabulary = vocabulary
        model = vocabulary.model
        raw_words = {w for s in model.structures for w in _raw_phrase_words(s)}
        self.lexicon = Lexicon.from_model(model, raw_words)
        self.index = self._build_index(model.structures)
        self.entries = {s.name: s for s in model.structures}
        self.conflicts = self._build_conflicts()

    # -- index -------------------------------------------------------------------------

    def _build_index(self, structures: list[StructureModel]) -> SynonymIndex:
        index = SynonymIndex(optional=frozenset(w for s in structures for w in s.optional_words))
        for entry in structures:
            own = frozenset(self._canonical(name_words(entry.name)))
            index.own_words[entry.name] = own
            own_phrase = [" ".join(name_words(entry.name))] if entry.match_own_name else []
            for phrase in [*entry.synonyms, *own_phrase]:
                for variant in phrase_variants(phrase):
                    key = frozenset(self._canonical(variant)) - frozenset(entry.optional_words)
                    if key:
                        _append_unique(index.keys.setdefault(key, []), entry)
                        for word in key:
                            index.by_word.setdefault(word, set()).add(entry.name)
        return index

    def _build_conflicts(self) -> dict[frozenset[str], str]:
        conflicts: dict[frozenset[str], str] = {}
        for conflict in self.vocabulary.model.conflicts:
            for phrase in conflict.phrases:
                for variant in phrase_variants(phrase):
                    conflicts[frozenset(self._canonical(variant))] = "|".join(conflict.names)
        return conflicts

    def _canonical(self, words: list[str]) -> list[str]:
        out: list[str] = []
        for word in words:
            out.extend(w.text for w in self.lexicon.canonical(word) if w.kind is Kind.ANATOMY)
        return out

    # -- deciding ----------------------------------------------------------------------

    def parse(self, raw: str) -> ParsedName:
        """The parsed words of ``raw`` (for callers that validate other answers)."""
        return parse_words(self.lexicon, split_name(raw))

    def words_of(self, structure_name: str) -> set[str]:
        """Every synonym word of a vocabulary structure (by its base name)."""
        return {w for w, names in self.index.by_word.items() if structure_name in names}

    def decide(self, raw: str) -> Decision:
        """The rules' decision for ``raw`` (never raises on odd input)."""
        split = split_name(raw)
        if split.composite:
            return abstain(raw, f"composite expression ({split.composite!r})")
        if not split.pieces:
            return abstain(raw, "no words")
        parsed = parse_words(self.lexicon, split)
        return self._decide_parsed(raw, parsed)

    def _decide_parsed(self, raw: str, parsed: ParsedName) -> Decision:
        if parsed.targets:
            return self._target(raw, parsed)
        blocker = _blocker(parsed)
        if blocker:
            return abstain(raw, blocker)
        if not parsed.anatomy:
            return abstain(raw, "no anatomy words")
        return self._organ(raw, parsed)

    def _target(self, raw: str, parsed: ParsedName) -> Decision:
        if self._whole_organ_ctv(parsed):
            decision = self._organ(raw, parsed, penalty=0.15, note="ctv")
            if not decision.abstained:
                return decision
        model = self.vocabulary.model
        target = build_target(parsed.words, model.target_classifiers, model.target_levels)
        if target is None:
            return abstain(raw, "target with words other than type, index, level or dose")
        confidence = 0.95 - 0.03 * target.dropped
        return Decision(raw, target.name, TARGET, round(confidence, 2), "target")

    def _whole_organ_ctv(self, parsed: ParsedName) -> bool:
        """ "CTV prostate": a CTV drawn as a whole organ (policy ``ctv_of_organ: organ``)."""
        policy = self.vocabulary.model.policies.ctv_of_organ
        plain = not (_has_dose(parsed) or parsed.prv or parsed.helper)
        return bool(parsed.anatomy) and parsed.targets == ["ctv"] and policy == "organ" and plain

    def _organ(
        self, raw: str, parsed: ParsedName, penalty: float = 0.0, note: str = ""
    ) -> Decision:
        words = frozenset(parsed.anatomy)
        conflict = self.conflicts.get(words) or self.conflicts.get(
            frozenset(w for w in words if len(w) > 1)
        )
        if conflict:
            return abstain(raw, f"clinics differ ({conflict}): set it in the overrides file")
        found = self.index.lookup(words)
        dropped_letters = False
        if not found:
            shorter = frozenset(w for w in words if len(w) > 1)
            found, dropped_letters = self.index.lookup(shorter), True
        if not found:
            return abstain(raw, "no synonym matches", self._candidates(parsed))
        fitting = [s for s in found if self._side_fits(s, parsed)]
        if not fitting:
            return abstain(raw, _side_problem(found[0], parsed))
        best = _best(fitting)
        if best is None:
            return abstain(raw, "ambiguous", tuple(s.name for s in fitting))
        return self._answer(raw, parsed, best, penalty + 0.03 * dropped_letters, note)

    def _side_fits(self, entry: StructureModel, parsed: ParsedName) -> bool:
        if len(parsed.sides) > 1 or parsed.relative:
            return False
        if entry.lateral:
            return bool(parsed.sides or parsed.weak_sides) or (
                (parsed.both or parsed.plural) and entry.plural is not None
            )
        return not parsed.sides or entry.side_policy == "drop"

    def _answer(
        self, raw: str, parsed: ParsedName, entry: StructureModel, penalty: float, note: str
    ) -> Decision:
        side = self._side(entry, parsed)
        if entry.lateral:
            name = f"{entry.name}_{side}" if side else (entry.plural or "")
        else:
            name = entry.name
        modifiers: list[str] = [note] if note else []
        built = self._modifiers(entry, parsed, name, side, modifiers)
        if built is None:
            return abstain(raw, "numbers or modifiers not understood")
        method, confidence = self._method(parsed, entry, penalty, modifiers)
        return Decision(
            raw, built, method, confidence, "; ".join(modifiers), side, tuple(modifiers)
        )

    def _side(self, entry: StructureModel, parsed: ParsedName) -> str:
        if not entry.lateral:
            return ""
        sides = parsed.sides or parsed.weak_sides
        return next(iter(sides)) if len(sides) == 1 else ""

    def _modifiers(
        self,
        entry: StructureModel,
        parsed: ParsedName,
        name: str,
        side: str,
        modifiers: list[str],
    ) -> str | None:
        numbers = list(parsed.numbers)
        if parsed.opt:
            if self.vocabulary.model.policies.opt != "base":
                return None
            modifiers.append("opt")
        versions = [n for n, unit in numbers if not unit and n.isdigit() and len(n) == 1]
        if versions and not parsed.prv:
            modifiers.append("version")
            numbers = [(n, u) for n, u in numbers if n not in versions or u]
        if parsed.noise:
            modifiers.append("noise")
        if parsed.prv:
            return _prv_name(entry, name, side, numbers, modifiers)
        if entry.thickness and numbers:
            return _thickness_name(name, numbers, modifiers)
        return name if not numbers else None

    def _method(
        self, parsed: ParsedName, entry: StructureModel, penalty: float, modifiers: list[str]
    ) -> tuple[str, float]:
        repaired = [r for r in parsed.repairs if r != "plural"]
        own = frozenset(parsed.anatomy) == self.index.own_words.get(entry.name)
        method = FUZZY if repaired else (EXACT if own and not modifiers else RULES)
        confidence = 0.99 if method == EXACT else 0.95
        confidence -= 0.05 * min(len(repaired), 3) + 0.03 * len(parsed.initials) + penalty
        confidence -= 0.1 * ("opt" in modifiers) + 0.02 * ("version" in modifiers)
        confidence -= 0.05 * bool(parsed.weak_sides and not parsed.sides)
        confidence -= 0.05 * bool(parsed.sides and not entry.lateral)
        return method, round(max(_CONFIDENCE_FLOOR, confidence), 2)

    def _candidates(self, parsed: ParsedName) -> tuple[str, ...]:
        """Vocabulary names sharing a specific word with the name, best overlap first (at
        most 8); none when the name has unknown words (an answer could not be checked) or
        carries modifiers an LLM answer would lose."""
        if parsed.unknown or parsed.prv or parsed.opt or parsed.helper or parsed.targets:
            return ()
        if parsed.numbers:
            return ()
        words = set(parsed.anatomy) - GENERIC_WORDS
        scores: dict[str, float] = {}
        for word in words:
            for name in self.index.by_word.get(word, ()):
                entry = self.entries[name]
                if self._side_fits(entry, parsed):
                    scores[name] = scores.get(name, 0.0) + 1.0
        ranked = sorted(scores, key=lambda n: (-scores[n], n))[:8]
        return tuple(self._sided(self.entries[n], parsed) for n in ranked)

    def _sided(self, entry: StructureModel, parsed: ParsedName) -> str:
        side = self._side(entry, parsed)
        return f"{entry.name}_{side}" if side else (entry.plural or entry.name)


def _raw_phrase_words(entry: StructureModel) -> set[str]:
    words = set(name_words(entry.name)) | set(entry.optional_words)
    for phrase in entry.synonyms:
        for variant in phrase_variants(phrase):
            words.update(variant)
    return words


def _append_unique(entries: list[StructureModel], entry: StructureModel) -> None:
    if all(e.name != entry.name for e in entries):
        entries.append(entry)


def _blocker(parsed: ParsedName) -> str:
    if parsed.relative:
        return "relative side (contra/ipsilateral)"
    if len(parsed.sides) > 1:
        return "both sides named"
    if parsed.helper:
        return f"helper structure ({parsed.helper[0]})"
    if parsed.unknown:
        return f"unknown word {parsed.unknown[0]!r}"
    return ""


def _has_dose(parsed: ParsedName) -> bool:
    return any(unit in ("gy", "cgy") or len(n) > 1 for n, unit in parsed.numbers)


def _best(entries: list[StructureModel]) -> StructureModel | None:
    top = max(e.priority for e in entries)
    best = [e for e in entries if e.priority == top]
    return best[0] if len(best) == 1 else None


def _side_problem(entry: StructureModel, parsed: ParsedName) -> str:
    if parsed.relative:
        return "relative side (contra/ipsilateral)"
    if len(parsed.sides) > 1:
        return "both sides named"
    if entry.lateral:
        return "laterality missing"
    return "side given for a midline structure"


def _prv_name(
    entry: StructureModel,
    name: str,
    side: str,
    numbers: list[tuple[str, str]],
    modifiers: list[str],
) -> str | None:
    if not name or len(numbers) > 1:
        return None
    margin = ""
    if numbers:
        value, unit = numbers[0]
        millimetres = float(value) * (10.0 if unit == "cm" else 1.0)
        if (
            unit not in ("", "mm", "cm")
            or not millimetres.is_integer()
            or not 0 < millimetres < 100
        ):
            return None
        margin = f"{int(millimetres):02d}"
    modifiers.append("prv")
    base = entry.name if side else name
    return f"{base}_PRV{margin}" + (f"_{side}" if side else "")


def _thickness_name(name: str, numbers: list[tuple[str, str]], modifiers: list[str]) -> str | None:
    if len(numbers) != 1 or numbers[0][1] not in ("mm", "cm"):
        return None
    value, unit = numbers[0]
    millimetres = float(value) * (10.0 if unit == "cm" else 1.0)
    if not millimetres.is_integer() or not 0 < millimetres < 100:
        return None
    modifiers.append("thickness")
    return f"{name}_{int(millimetres):02d}mm"
