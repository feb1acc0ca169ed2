"""Surgery done for the current cancer: breast-conserving, mastectomy or prostatectomy.

A mention counts as done unless negated, planned, or only an option (offered, discussed,
recommended, "RALP vs RT"); mentions in history sentences or of risk-reducing surgery do
not count. Among done operations a mastectomy
wins over breast conservation (a completion mastectomy follows a wide local excision).
"""

from __future__ import annotations

import re

from engines.clinical.facts import Evidence
from engines.clinical.text import Note

PATTERNS: dict[str, re.Pattern[str]] = {
    "mastectomy": re.compile(
        r"(?<!partial )(?<!segmental )\b(mastectom\w*|mastektom\w*|ablatio|MRM|modified radical|SSM|NSM|"
        r"post-?mastectomy|PMRT)\b",
        re.IGNORECASE,
    ),
    "BCS": re.compile(
        r"\b(lumpectom\w*|wide local ex\w*|WLE|breast[- ]conserv\w*|BCS|BCT|"
        r"partial mastectom\w*|segmental mastectom\w*|quadrantectom\w*|tumou?rectom\w*|"
        r"segmentectom\w*|brusterhalt\w*|quadrantectomia|cuadrantectom\w*|re-?excision|"
        r"therapeutic mammoplasty|BET|"
        r"oncoplastic)\b"
        r"|\b(s/p|status post|post|after)\s+((L|R|Lt|Rt|left|right)\s+)?lump\b",
        re.IGNORECASE,
    ),
    "prostatectomy": re.compile(
        r"(?<!transurethral )(?<!simple )\b(prostatectom\w*|prostatektom\w*|RALP|RARP|RRP|LRP)\b"
        r"|\bRP\b(?!\s*(?:nodes?|lymph|LN))",  # prostate notes only: radical prostatectomy
        re.IGNORECASE,
    ),
}
_DONE_ALWAYS = re.compile(r"post-?mastectomy|PMRT", re.IGNORECASE)
_RISK_REDUCING = re.compile(r"prophylactic|risk[- ]reducing", re.IGNORECASE)
_THERAPEUTIC = re.compile(r"therapeutic", re.IGNORECASE)
# After the operation's name: "mastectomy declined / not performed", "... was offered".
_AFTER_NOT_DONE = re.compile(
    r"^[\s\w()/-]{0,25}?\b(declined|refused|not\s+(?:performed|done|undertaken|carried out))\b",
    re.IGNORECASE,
)
_AFTER_OPTION = re.compile(
    r"^[\s\w()/-]{0,25}?\b(recommended|offered|proposed|considered|discussed|advised|"
    r"vs\.?|versus|or)\b",
    re.IGNORECASE,
)
_AFTER_PLANNED = re.compile(
    r"^[\s\w()/-]{0,25}?\b(planned|scheduled|booked|to follow|pending)\b", re.IGNORECASE
)
_NOT_APPLICABLE = re.compile(  # "PMRT not applicable" after breast conservation
    r"^[\s\w()/-]{0,15}?\b(not\s+(?:applicable|indicated|required|needed|relevant)|n/a)\b",
    re.IGNORECASE,
)
_PRECEDENCE = ("mastectomy", "BCS", "prostatectomy")


def find_surgery(note: Note, site: str | None) -> tuple[str | None, Evidence | None]:
    """The operation for the current cancer, or None, and where it was read."""
    done: dict[str, Evidence] = {}
    planned: dict[str, Evidence] = {}
    for kind in _kinds(site):
        for match in PATTERNS[kind].finditer(note.text):
            status = _status(note, match)
            if status:
                start, end = match.span()
                target = done if status == "done" else planned
                target.setdefault(kind, Evidence(note.original[start:end], start, end))
    for kind in _PRECEDENCE:
        if kind in done:
            return kind, done[kind]
    if len(planned) == 1:
        kind, evidence = next(iter(planned.items()))
        return kind, evidence
    return None, None


def _kinds(site: str | None) -> tuple[str, ...]:
    if site == "breast":
        return ("mastectomy", "BCS")
    if site == "prostate":
        return ("prostatectomy",)
    return _PRECEDENCE


def _risk_reducing(note: Note, start: int, end: int) -> bool:
    """'left prophylactic mastectomy', 'mastectomy (risk-reducing)': not for the cancer
    (unless the same words also say 'therapeutic', as in 'right therapeutic, left RRM')."""
    before = re.split(r"[,;]|\band\b", note.text[max(0, start - 30) : start])[-1]
    bracket = re.match(r"^\s*\([^)]{0,60}\)", note.text[end : end + 70])
    words = before + (bracket.group(0) if bracket else "")
    return bool(_RISK_REDUCING.search(words)) and not _THERAPEUTIC.search(words)


def _status(note: Note, match: re.Match[str]) -> str:
    """``done``, ``planned`` or "" (does not count)."""
    start, end = match.span()
    if _DONE_ALWAYS.fullmatch(match.group(0)):  # "PMRT": a mastectomy was done, unless
        negated = note.negated(start, end, words_before=3, after=False)  # "no PMRT" or
        return "" if negated or _NOT_APPLICABLE.match(note.after(end, 40)) else "done"
    if _risk_reducing(note, start, end):
        return ""
    if note.in_history(start) or note.negated(start, end, words_before=4, after=False):
        return ""
    after = re.split(r"[,;.]|\bbut\b", note.after(end, 60))[0]
    intention = note.intention(start)
    if _AFTER_NOT_DONE.match(after) or _AFTER_OPTION.match(after) or intention == "option":
        return ""
    return "planned" if intention == "planned" or _AFTER_PLANNED.match(after) else "done"
