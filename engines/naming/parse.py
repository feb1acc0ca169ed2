"""Canonical words -> the parts of a structure name: anatomy, side, modifiers, numbers."""

from __future__ import annotations

from dataclasses import dataclass, field

from engines.naming.lexicon import Kind, Lexicon, Word
from engines.naming.normalise import Piece, SplitName

_BAD_WORDS = (Kind.INITIALS, Kind.UNKNOWN)
# prefixes written apart from their word ("sub mand", "supra glottic")
_GLUE_PREFIXES = frozenset({"sub", "supra", "infra", "para", "peri", "intra", "retro", "trans"})


@dataclass
class ParsedName:
    """What the words of one name say, in order of appearance where order matters."""

    anatomy: list[str] = field(default_factory=list)
    sides: set[str] = field(default_factory=set)  # strong: "L", "R"
    weak_sides: set[str] = field(default_factory=set)  # side letters glued to initials
    both: bool = False
    plural: bool = False
    relative: bool = False
    prv: bool = False
    opt: bool = False
    helper: list[str] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)
    numbers: list[tuple[str, str]] = field(default_factory=list)  # (number, unit or "")
    noise: list[str] = field(default_factory=list)
    initials: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    repairs: list[str] = field(default_factory=list)
    words: list[Word] = field(default_factory=list)

    @property
    def side(self) -> str:
        """ "L", "R", "" (none) or "LR" (contradictory)."""
        return "".join(sorted(self.sides))


def parse_words(lex: Lexicon, split: SplitName) -> ParsedName:
    """Repair every piece, re-splitting glued chunks, and sort the words by kind."""
    parsed = ParsedName()
    parsed.words = _repaired_words(lex, split)
    _classify(parsed)
    return parsed


def _repaired_words(lex: Lexicon, split: SplitName) -> list[Word]:
    words: list[Word] = []
    for chunk_pieces in _by_chunk(_joined(lex, split.pieces)):
        words.extend(_chunk_words(lex, chunk_pieces))
    return words


def _joined(lex: Lexicon, pieces: tuple[Piece, ...]) -> tuple[Piece, ...]:
    """Join an unknown piece with the next one when together they are a known word
    ("sub mand" -> "submand")."""
    out: list[Piece] = []
    index = 0
    while index < len(pieces):
        piece = pieces[index]
        following = pieces[index + 1] if index + 1 < len(pieces) else None
        joined = piece.text + following.text if following else ""
        glue = following is not None and (
            piece.text in _GLUE_PREFIXES
            or not lex.known(piece.text)
            or not lex.known(following.text)
        )
        if glue and joined.isalpha() and lex.kind_of(joined) is Kind.ANATOMY:
            out.append(Piece(joined, joined, piece.chunk_index))
            index += 2
            continue
        out.append(piece)
        index += 1
    return tuple(out)


def _by_chunk(pieces: tuple[Piece, ...]) -> list[list[Piece]]:
    groups: dict[int, list[Piece]] = {}
    for piece in pieces:
        groups.setdefault(piece.chunk_index, []).append(piece)
    return [groups[k] for k in sorted(groups)]


def _chunk_words(lex: Lexicon, pieces: list[Piece]) -> list[Word]:
    words = [w for p in pieces for w in lex.repair(p.text, p.chunk)]
    chunk = pieces[0].chunk
    if len(pieces) > 1 and chunk.isalpha() and any(w.kind in _BAD_WORDS for w in words):
        whole = lex.repair(chunk, chunk)
        if not any(w.kind in _BAD_WORDS for w in whole):
            return whole
    return words


def _classify(parsed: ParsedName) -> None:
    pending_number: str | None = None
    for word in parsed.words:
        if word.repair:
            parsed.repairs.append(word.repair)
        if word.plural:
            parsed.plural = True
        if word.kind is Kind.NUMBER:
            if pending_number is not None:
                parsed.numbers.append((pending_number, ""))
            pending_number = word.text
            continue
        if word.kind is Kind.UNIT and pending_number is not None:
            parsed.numbers.append((pending_number, word.text))
            pending_number = None
            continue
        _add_word(parsed, word)
    if pending_number is not None:
        parsed.numbers.append((pending_number, ""))


def _add_word(parsed: ParsedName, word: Word) -> None:
    kind = word.kind
    if kind in (Kind.LEFT, Kind.RIGHT):
        side = "L" if kind is Kind.LEFT else "R"
        (parsed.weak_sides if word.weak else parsed.sides).add(side)
    elif kind is Kind.BOTH:
        parsed.both = True
    elif kind is Kind.RELATIVE:
        parsed.relative = True
    elif kind is Kind.PRV:
        parsed.prv = True
    elif kind is Kind.OPT:
        parsed.opt = True
    else:
        _bucket(parsed, kind).append(word.text)


def _bucket(parsed: ParsedName, kind: Kind) -> list[str]:
    return {
        Kind.HELPER: parsed.helper,
        Kind.TARGET: parsed.targets,
        Kind.NOISE: parsed.noise,
        Kind.INITIALS: parsed.initials,
        Kind.UNKNOWN: parsed.unknown,
        Kind.UNIT: parsed.unknown,
    }.get(kind, parsed.anatomy)
