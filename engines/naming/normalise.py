"""Raw structure name -> lowercase word pieces, with composite expressions detected.

Only text work happens here (no vocabulary): fold accents to ASCII, drop possessive "'s",
find boolean/crop operators ("Parotid_L - PTV60", "Prostate + SV", "mandible in PTV"), split
on separators, camelCase humps and letter/digit boundaries. Each piece remembers the chunk it
came from so that a glued word ("lcochlea", "PScochlealeft") can be re-split as a whole.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

_POSSESSIVE = re.compile(r"(?i)(?<=[a-z])'s\b")
_QUOTES = re.compile(r"[\"'`\u2018\u2019\u201c\u201d]")
_OPERATOR_CHARS = re.compile(r"[+&/\\]")
_OPERATOR_WORDS = frozenset(
    {
        "and",
        "in",
        "minus",
        "plus",
        "with",
        "without",
        "outside",
        "inside",
        "excl",
        "exclude",
        "excluding",
        "und",
        "met",
        "con",
        "not",
        "no",
        "or",
        "within",
        "from",
        "into",
        "overlap",
    }
)
_MINUS = re.compile(r"-\s*([A-Za-z]+|\d+(?:\.\d+)?\s*(?:mm|cm)\b)", re.IGNORECASE)
_MINUS_TARGETS = ("ptv", "ctv", "gtv", "itv", "oar", "all", "body", "external", "ext")
_SEPARATORS = re.compile(r"[^A-Za-z0-9.]+")
_DOT_NOT_DECIMAL = re.compile(r"(?<!\d)\.|\.(?!\d)")
_HUMPS = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+(?:\.\d+)?")
_TARGET_IN_CHUNK = re.compile(r"(gtv|ctv|itv|ptv)")
_LETTERS_DIGITS = re.compile(r"[a-z]+|\d+(?:\.\d+)?")


@dataclass(frozen=True)
class Piece:
    """One word piece (lowercase) and the chunk (lowercase, whole) it was cut from."""

    text: str
    chunk: str
    chunk_index: int


@dataclass(frozen=True)
class SplitName:
    """A raw name cut into pieces; ``composite`` names the operator found, if any."""

    pieces: tuple[Piece, ...]
    composite: str = ""


def fold_ascii(text: str) -> str:
    """Accents and ligatures folded to ASCII (ß -> ss, é -> e); other symbols dropped."""
    text = text.replace("ß", "ss").replace("æ", "ae").replace("ø", "o").replace("œ", "oe")
    decomposed = unicodedata.normalize("NFKD", text)
    return decomposed.encode("ascii", "ignore").decode("ascii")


def split_name(raw: str) -> SplitName:
    """Split a raw structure name into word pieces; see the module docstring."""
    text = _QUOTES.sub("", _POSSESSIVE.sub("", fold_ascii(raw)))
    operator = _find_operator(text)
    text = _DOT_NOT_DECIMAL.sub(" ", _SEPARATORS.sub(" ", text))
    pieces: list[Piece] = []
    for index, chunk in enumerate(text.split()):
        pieces.extend(Piece(p, chunk.lower(), index) for p in _split_chunk(chunk))
    if not operator:
        operator = next((p.text for p in pieces if p.text in _OPERATOR_WORDS), "")
    return SplitName(tuple(pieces), operator)


def _find_operator(text: str) -> str:
    found = _OPERATOR_CHARS.search(text)
    if found:
        return found.group(0)
    for match in _MINUS.finditer(text):
        following = match.group(1).lower()
        if following[0].isdigit() or following.startswith(_MINUS_TARGETS):
            return "-"
    return ""


def _split_chunk(chunk: str) -> list[str]:
    lowered = chunk.lower()
    if _TARGET_IN_CHUNK.search(lowered):
        return [
            part
            for piece in _TARGET_IN_CHUNK.split(lowered)
            if piece
            for part in ([piece] if _TARGET_IN_CHUNK.fullmatch(piece) else _letters_digits(piece))
        ]
    return [hump.lower() for hump in _HUMPS.findall(chunk)]


def _letters_digits(text: str) -> list[str]:
    return _LETTERS_DIGITS.findall(text)
