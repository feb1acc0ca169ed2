"""Prostate facts: PSA (ng/mL), Gleason pattern, ISUP grade group, seminal vesicle invasion."""

from __future__ import annotations

import re
from dataclasses import dataclass

from engines.clinical.facts import Evidence, Stage
from engines.clinical.surgery import find_surgery
from engines.clinical.text import Note, number

_NUM = r"(\d{1,4}(?:[.,]\d{1,3})?)"
_PSA = re.compile(  # not "PSA > 20" (a threshold), not "PSA 12%"
    rf"\b(?:i|initial\s+)?PSA\b(?![^0-9.;]{{0,12}}?(?:[<>\u2264\u2265]|above|over|below|under|"
    rf"greater|less|threshold|cut-?off))[^0-9.;]{{0,30}}?{_NUM}(?!\s*%)",
    re.IGNORECASE,
)
_INITIAL = re.compile(r"\b(initial|iPSA)\b", re.IGNORECASE)
_PSA_RISE = re.compile(
    rf"(?:\b(?:rising|rose|increased|increasing|up)\s+to|->|\u2192|=>)\s*{_NUM}\s*"
    r"(?:ng/ml|\u00b5g/l|ug/l)",
    re.IGNORECASE,
)
# Free PSA, PSA density, velocity or doubling time are not the PSA value.
_NOT_TOTAL = re.compile(
    r"\b(free|density|velocity|doubling|ratio|f/t|kinetics|PSAD|PSADT|PSAV)\b", re.IGNORECASE
)
_PSA_OLDER = re.compile(r"\b(previously|prior|earlier|baseline|was|from)\b[^.;]*$", re.IGNORECASE)
_DATE = re.compile(
    r"\b\d{1,2}[/.-]\d{1,2}[/.-]\d{2,4}\b|\b\d{4}[./-]\d{1,2}[./-]\d{1,2}\b"
    r"|\b\d{1,2}/(?:19|20)\d{2}\b"
    r"|\b(?:19|20)\d{2}\b"
)
# "PSA 7.7 (1/2025), 8.3 (4/2025), 9.0 (7/2025)": the later values of a series (dates are
# blanked before matching, so their brackets are empty).
_PSA_SERIES = re.compile(
    rf"(?<=\))\s*(?:,|->|\u2192|=>|then|and)\s*{_NUM}\s*(?:ng/ml|\u00b5g/l|ug/l)?\s*\(\s*\)",
    re.IGNORECASE,
)
_PSA_LABEL = re.compile(
    # "initial" and "iPSA" are not here: after active surveillance the latest value counts
    r"\b(at\s+diagnosis|at\s+dx|diagnostic|presenting|at\s+presentation|pre-?op\w*|"
    r"pre-?surg\w*|pre-?(?:RALP|RARP|RRP|RP|prostatectomy)|"
    r"pre-?treatment|pre-?biopsy)\b",
    re.IGNORECASE,
)
_POST_TREATMENT = re.compile(
    r"\b(post-?op\w*|nadir|undetectable|biochemical (recurrence|failure)|BCR|"
    r"post-?prostatectomy|after (radical )?prostatectomy|recurrence|since|on ADT)\b",
    re.IGNORECASE,
)
_GLEASON_SUM_FIRST = re.compile(
    r"\b(?:Gleason|GS)(?:[\s-]+(?:score|sum|grade))?\s*[:=]?\s*(?:of\s+)?(\d{1,2})\s*"
    r"\(\s*([1-5])\s*\+\s*([1-5])\s*\)",
    re.IGNORECASE,
)
_GLEASON = re.compile(
    r"\b(?:Gleason|GS)(?:[\s-]+(?:score|sum|grade|pattern))?\s*[:=]?\s*(?:of\s+)?"
    r"([1-5])\s*\+\s*([1-5])(?:\s*=\s*\d{1,2})?",
    re.IGNORECASE,
)
_GLEASON_BARE = re.compile(r"(?<![\d+])([1-5])\s*\+\s*([1-5])\s*=\s*(\d{1,2})\b")
_GRADE_GROUP = re.compile(
    r"\b(?:(?:WHO/)?ISUP(?:\s+grade)?(?:\s+group)?|grade\s+group|GG|Gruppe)\s*[:=]?\s*([1-5])\b",
    re.IGNORECASE,
)
_SURGICAL = re.compile(r"prostatectom\w*|RALP|RARP|RRP|specimen|radical", re.IGNORECASE)
_BIOPSY = re.compile(r"biops\w*|\bbx\b|cores?\b|TRUS|diagnos\w*", re.IGNORECASE)
_SVI = re.compile(
    r"\b(seminal\s+vesic\w*|SV)\s+(?:(?:is|are|was|were)\s+)?(invasion|involvement|infiltration|"
    r"extension|involved|invaded|positive)"
    r"|\b(invasion|involvement|infiltration|extension)\s+(of|into|to)\s+(the\s+)?"
    r"((left|right|bilateral|both)\s+)?seminal\s+vesic\w*"
    r"|\bSVI\b|\bSamenblaseninfiltration\b",
    re.IGNORECASE,
)
_SV_NORMAL = re.compile(
    r"\b(seminal\s+vesic\w*|SV|Samenblasen)\s*:?\s*(are\s+|were\s+)?(free|normal|"
    r"unremarkable|uninvolved|clear|not involved|negative|unauff\w*|spared)",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class _Gleason:
    pattern: str
    surgical: bool
    evidence: Evidence

    @property
    def rank(self) -> tuple[int, int]:
        primary, secondary = (int(x) for x in self.pattern.split("+"))
        return primary + secondary, primary


@dataclass(frozen=True)
class _Psa:
    value: float  # ng/mL
    labelled: bool  # "at diagnosis", "pre-operative", "presenting" ...
    initial: bool  # "initial PSA", "iPSA": before any operation, but a later value counts
    older: bool  # "previously 6.1", "baseline 5"
    evidence: Evidence


def find_psa(note: Note) -> tuple[float | None, Evidence | None]:
    """The diagnostic PSA in ng/mL: the first one labelled as such, else the most recent
    pre-treatment one (the last written, unless marked as earlier); post-treatment values
    (nadir, post-operative, recurrence, on ADT, or written after the prostatectomy without
    a pre-operative label) never count."""
    surgery, operated = find_surgery(note, "prostate")
    after_surgery = operated.start if surgery and operated else len(note.text)
    found = sorted(
        (
            p
            for p in _psa_values(note)
            if p.labelled or p.initial or p.evidence.start < after_surgery
        ),
        key=lambda p: p.evidence.start,
    )
    labelled = [p for p in found if p.labelled]
    recent = [p for p in found if not p.older]
    pick = labelled[0] if labelled else recent[-1] if recent else found[0] if found else None
    return (pick.value, pick.evidence) if pick else (None, None)


def _psa_values(note: Note) -> list[_Psa]:
    dateless = _DATE.sub(lambda m: " " * len(m.group(0)), note.text)  # dates are not values
    out = []
    for regex in (_PSA, _PSA_RISE, _PSA_SERIES):
        for match in regex.finditer(dateless):
            if _post_treatment(note, match) or _NOT_TOTAL.search(
                note.text[max(0, match.start() - 12) : match.end(1)]
            ):
                continue
            before = note.before(match.end(1), 60)
            labelled = bool(_PSA_LABEL.search(before))
            initial = bool(_INITIAL.search(note.before(match.end(1), 40)))
            older = bool(_PSA_OLDER.search(note.before(match.start(1), 25)))
            value = number(match.group(1))
            out.append(_Psa(value, labelled, initial, older, _evidence(note, match)))
    return out


def _post_treatment(note: Note, match: re.Match[str]) -> bool:
    """A post-treatment cue before the value in its sentence, or after it in its clause."""
    after = re.split(r"[,;]", note.after(match.end(), 60))[0]
    return bool(_POST_TREATMENT.search(note.before(match.end(1), 200) + " " + after))


def _surgical(note: Note, position: int) -> bool:
    """The nearest specimen word before ``position`` in its sentence is surgical."""
    before = note.before(position, 400)
    surgical = [m.end() for m in _SURGICAL.finditer(before)]
    biopsy = [m.end() for m in _BIOPSY.finditer(before)]
    return bool(surgical) and max(surgical) > max(biopsy, default=-1)


def find_gleason(note: Note) -> tuple[str | None, Evidence | None]:
    """The Gleason pattern ``"p+s"``: the highest on biopsy, else the highest on the
    prostatectomy specimen."""
    mentions = []
    taken: list[tuple[int, int]] = []
    for regex, first in ((_GLEASON_SUM_FIRST, 2), (_GLEASON, 1), (_GLEASON_BARE, 1)):
        for match in regex.finditer(note.text):
            if any(s < match.end() and match.start() < e for s, e in taken):
                continue
            primary, secondary = match.group(first), match.group(first + 1)
            if regex is _GLEASON_BARE and int(primary) + int(secondary) != int(match.group(3)):
                continue
            taken.append(match.span())
            surgical = _surgical(note, match.start())
            mentions.append(_Gleason(f"{primary}+{secondary}", surgical, _evidence(note, match)))
    for surgical in (False, True):
        group = [m for m in mentions if m.surgical == surgical]
        if group:
            best = max(group, key=lambda m: m.rank)
            return best.pattern, best.evidence
    return None, None


def find_grade_group(note: Note) -> tuple[int | None, Evidence | None]:
    """The ISUP grade group as written (the highest when several are)."""
    matches = list(_GRADE_GROUP.finditer(note.text))
    if not matches:
        return None, None
    best = max(matches, key=lambda m: int(m.group(1)))
    return int(best.group(1)), _evidence(note, best)


def find_svi(note: Note, stages: list[Stage]) -> tuple[bool | None, Evidence | None]:
    """True on a non-negated invasion mention or a T3b stage; False on a negated one or
    "seminal vesicles free/normal"; None when the note says nothing."""
    negative: Evidence | None = None
    for match in _SVI.finditer(note.text):
        if note.negated(match.start(), match.end(), skip=2):
            negative = negative or _evidence(note, match)
        else:
            return True, _evidence(note, match)
    for stage in stages:
        if stage.kind == "T" and stage.value.startswith("T3b") and not stage.in_history:
            return True, stage.evidence
    normal = _SV_NORMAL.search(note.text)
    if negative is None and normal is not None:
        negative = _evidence(note, normal)
    return (False, negative) if negative is not None else (None, None)


def _evidence(note: Note, match: re.Match[str]) -> Evidence:
    start, end = match.span()
    return Evidence(note.original[start:end], start, end)
