"""Laterality of the treated breast cancer.

Each side mention is weighed by what it qualifies (a tumour or operation word weighs most,
the breast or axilla less) and dropped when negated ("no right-sided disease") or in a
sentence about history or the other side ("history of right breast cancer", "left
prophylactic mastectomy"). "Bilateral" counts only for disease ("bilateral breast cancer"),
not for imaging or surgery ("bilateral mammogram", "bilateral mastectomy").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date

from engines.clinical.facts import Evidence
from engines.clinical.text import Note

_WORDS = {
    "left": "left|links|linke[nr]?|sinistr[ao]|gauche|izquierd[ao]",
    "right": "right|rechts|rechte[nr]?|destr[ao]|droite?|derech[ao]",
    "bilateral": "bilateral|bilat|bilaterale|beidseitig|beidseits|bilat[ée]ral",
}
_ABBREVIATIONS = {
    "left": "L|Lt|LT|lt|\\(L\\)|\\(Lt\\)|Lt\\.",
    "right": "R|Rt|rt|\\(R\\)|\\(Rt\\)|Rt\\.",
}
_TUMOUR = (
    r"carcinoma|cancer|ca\b|Ca\b|IDC|ILC|DCIS|tumou?r|mass|lesion|lump|primary|malignan\w*|"
    r"WLE|wide local|lumpectom\w*|mastectom\w*|quadrantectom\w*|excision|MRM|SSM|NSM|"
    r"breast[- ]conserving|partial|disease|Mamma-Ca|carcinoma duttale"
)
_ORGAN = r"breast|br\b|brest|mamma\w*|brust|sein|seno|axill\w*|chest wall|CW\b|SCF|SLNB|nipple"
_HEAD_TUMOUR = re.compile(rf"^[\s,:()-]{{0,3}}(\w+:?[\s-]+){{0,3}}?({_TUMOUR})", re.IGNORECASE)
MALIGNANT = 4  # weight of a side that qualifies a cancer or its operation
_MALIGNANT = re.compile(
    r"carcinoma|cancer|ca|IDC|ILC|DCIS|primary|malignan\w*|WLE|wide local|lumpectom\w*|"
    r"mastectom\w*|quadrantectom\w*|excision|MRM|SSM|NSM|breast[- ]conserving|Mamma-Ca|"
    r"carcinoma duttale",
    re.IGNORECASE,
)
_HEAD_NEGATED = re.compile(r"\b(no|not|without|negative|benign|normal|free)\b", re.IGNORECASE)
_HEAD_ORGAN = re.compile(rf"^[\s,:()-]{{0,3}}(\w+[\s-]){{0,2}}?({_ORGAN})", re.IGNORECASE)
_TAIL_ORGAN = re.compile(rf"({_ORGAN}|{_TUMOUR})[\s,:-]{{0,3}}(\w+\s){{0,1}}$", re.IGNORECASE)
_YEAR = re.compile(r"(?<!\d)((?:19|20)\d{2})(?!\d)")
OLD_YEARS = 3  # before the note's latest year
ANCIENT_YEARS = 10  # before this year: an earlier cancer even in an undated note
_LABEL = re.compile(r"\b(laterality|side|seite|lato|c\u00f4t\u00e9)\s*[:=|-]\s*$", re.IGNORECASE)
_ABBR_TAIL = re.compile(rf"\b({_ORGAN}|{_TUMOUR})[\s,:-]{{0,3}}\(?$", re.IGNORECASE)
_ABBR_HEAD = re.compile(rf"^\.?[\s-]{{0,2}}({_ORGAN}|{_TUMOUR})", re.IGNORECASE)
_DISEASE = re.compile(
    r"^\.?[\s-]{0,2}(synchronous\s+|metachronous\s+)?(breast\s+)?(carcinomas?|cancers?|ca\b|"
    r"tumou?rs|disease|primar(y|ies)|IDC|ILC|DCIS|malignanc\w*)",
    re.IGNORECASE,
)
_BREAST_CONTEXT = re.compile(rf"({_ORGAN}|{_TUMOUR})", re.IGNORECASE)


@dataclass(frozen=True)
class _Mention:
    side: str
    weight: int
    evidence: Evidence


def find_laterality(note: Note) -> tuple[str | None, Evidence | None]:
    """``left``/``right``/``bilateral`` (or None) and the strongest mention behind it."""
    mentions = [m for m in _mentions(note) if m.weight > 0]
    if not mentions:
        return None, None
    bilateral = [m for m in mentions if m.side == "bilateral"]
    if bilateral:
        return "bilateral", bilateral[0].evidence
    if _both_sides(mentions):
        recent = [m for m in mentions if not _dated_years_before(note, m.evidence.start)]
        mentions = recent if {m.side for m in recent} else mentions
    strong = {m.side for m in mentions if m.weight >= 3}
    if len(strong) == 1:  # only one side has a tumour or operation: many weak mentions of
        mentions = [m for m in mentions if m.side in strong]  # the other do not outvote it
    score = {side: sum(m.weight for m in mentions if m.side == side) for side in ("left", "right")}
    low, high = sorted(score.values())
    cancers = {m.side for m in mentions if m.weight >= MALIGNANT}
    if cancers == {"left", "right"} and low * 2 >= high:
        best = max(mentions, key=lambda m: m.weight)
        return "bilateral", best.evidence
    side = max(score, key=lambda s: (score[s], -_first(mentions, s)))
    best = max((m for m in mentions if m.side == side), key=lambda m: m.weight)
    return side, best.evidence


def _both_sides(mentions: list[_Mention]) -> bool:
    return {m.side for m in mentions if m.weight >= 2} == {"left", "right"}


def _dated_years_before(note: Note, position: int) -> bool:
    """The sentence names a year at least ``OLD_YEARS`` before the latest one in the note
    ("s/p R mastectomy 2010" in a 2025 letter), or ``ANCIENT_YEARS`` before this one: an
    earlier cancer, when both sides are mentioned."""
    years = [int(y) for y in _YEAR.findall(note.text)]
    if not years:
        return False
    own = [int(y) for y in _YEAR.findall(note.sentence_text(position))]
    this_year = date.today().year
    return any(y <= max(years) - OLD_YEARS or y <= this_year - ANCIENT_YEARS for y in own)


def _first(mentions: list[_Mention], side: str) -> int:
    starts = [m.evidence.start for m in mentions if m.side == side]
    return min(starts) if starts else 10**9


def _mentions(note: Note) -> list[_Mention]:
    out = []
    for side, words in _WORDS.items():
        for match in re.finditer(rf"\b({words})\b", note.text, re.IGNORECASE):
            out.append(_weigh(note, side, match, abbreviation=False))
    for side, words in _ABBREVIATIONS.items():
        for match in re.finditer(rf"(?<![\w(])({words})(?![\w)])", note.text):
            out.append(_weigh(note, side, match, abbreviation=True))
    return out


def _tumour_weight(after: str) -> int:
    """4 when the side qualifies a cancer or its operation, 3 for a mass or lesion, else 0."""
    head = _HEAD_TUMOUR.match(after)
    if head is None or _HEAD_NEGATED.search(head.group(0)):
        return 0
    return MALIGNANT if _MALIGNANT.fullmatch(head.group(2)) else 3


def _weigh(note: Note, side: str, match: re.Match[str], abbreviation: bool) -> _Mention:
    start, end = match.span()
    evidence = Evidence(note.original[start:end], start, end)
    after = note.after(end, 50)
    if note.negated(start, end, words_before=3) or note.in_history(start, other_disease=True):
        return _Mention(side, 0, evidence)
    if _LABEL.search(note.before(start, 30)):
        return _Mention(side, MALIGNANT, evidence)  # "Laterality: left", "Side: R"
    if side == "bilateral":
        return _Mention(side, MALIGNANT if _DISEASE.match(after) else 0, evidence)
    if abbreviation:
        if _ABBR_HEAD.match(after):
            return _Mention(side, max(3, _tumour_weight(after)), evidence)
        return _Mention(side, 2 if _ABBR_TAIL.search(note.before(start, 30)) else 0, evidence)
    weight = _tumour_weight(after)
    if weight:
        return _Mention(side, weight, evidence)
    if _HEAD_ORGAN.match(after) or _TAIL_ORGAN.search(note.before(start, 30)):
        return _Mention(side, 2, evidence)
    return _Mention(side, 1 if _BREAST_CONTEXT.search(note.sentence_text(start)) else 0, evidence)
