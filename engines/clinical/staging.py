"""TNM stages as written: ``cT2 cN1 M0``, ``cT2N1M0``, ``pT1b pN0(sn)``, ``ypT0 ypN1a``.

A prefix missing on a component inherits the one before it in the same string
(``pT1bN0`` -> pN0); a stage with no prefix at all takes one from its sentence
("Pathology: T1c N0" -> p, "Clinical stage T2b" -> c), else stays unstated (clinical).
"""

from __future__ import annotations

import re

from engines.clinical.facts import Evidence, Stage
from engines.clinical.text import Note

_PRE = r"(?P<{k}pre>yp|YP|yc|rp|rc|mr|c|C|p|P|y|r|a)?"
_T = _PRE.format(k="t") + r"T(?P<t>is|1mi|[0-4][a-dA-D]?|[xX])(?:\((?:m|\d|sn|dcis)\))?"
_N = (
    _PRE.format(k="n")
    + r"N(?P<n>[0-3][a-cA-C]?|[xX]|\+)(?P<mi>mi|\(mi\))?(?:\s?\((?:sn|i\+|i-|mol\+|mol-|f|\d+/\d+)\))?"
)
_M = _PRE.format(k="m") + r"M(?P<m>[01][a-d]?|[xX])(?:\((?:i\+)\))?"
_GAP = r"[\s,]{0,2}"
_EDGE_BEFORE = r"(?<![A-Za-z0-9/])"
_EDGE_AFTER = r"(?![A-Za-z0-9+])"
COMBINED = re.compile(f"{_EDGE_BEFORE}{_T}(?:{_GAP}{_N})?(?:{_GAP}{_M})?{_EDGE_AFTER}")
ALONE_N = re.compile(f"{_EDGE_BEFORE}{_N}(?:{_GAP}{_M})?{_EDGE_AFTER}")
ALONE_M = re.compile(f"{_EDGE_BEFORE}{_M}{_EDGE_AFTER}")
# "T2-weighted", "T1W", "T2 signal": MRI, not a stage; "T4 vertebra": a level.
_NOT_A_STAGE = re.compile(
    r"^\s?-?\s?(weighted|w\b|wi\b|flair|signal|hyper|hypo|sequence|image|vertebra|level|spine)",
    re.IGNORECASE,
)
_PATH_CONTEXT = re.compile(
    r"\b(patholog\w*|histolog\w*|histo|path|pTNM|surgical|final|specimen|resection)\b",
    re.IGNORECASE,
)
_YP_CONTEXT = re.compile(r"\b(post-?NACT|after NACT|post-?neoadjuvant|ypTNM)\b", re.IGNORECASE)
_CLINICAL_CONTEXT = re.compile(r"\b(clinical\w*|cTNM|DRE|staging|staged)\b", re.IGNORECASE)
_SUPERSEDED = re.compile(
    r"\b(previously|formerly|initially|originally)\s+(reported|staged|given)\s+(as\s+)?\W*$",
    re.IGNORECASE,
)
_NO_METASTASES = re.compile(
    r"\b(no|negative for|free of|without)\s+(evidence of\s+)?(?:(?:nodal|nodes?)\s+(?:or|and)\s+)?"
    r"(distant\s+)?"
    r"(metasta\w*|metastatic disease|distant disease|c?M1\b)"
    r"|\bstaging\s+(?:scans?|CT|PET(?:[/-]CT)?|work-?up|investigations?)?\s*(?:were|was|is|are)?"
    r"\s*(?:neg\b|negative|clear|unremarkable)",
    re.IGNORECASE,
)


_PREFIXES = {
    "YP": "yp",
    "P": "p",
    "C": "c",
    "mr": "c",
}  # upper-case reports; MRI staging is clinical


def parse_stages(note: Note) -> list[Stage]:
    """Every T, N and M component in the note, in text order."""
    stages: list[Stage] = []
    taken: list[tuple[int, int]] = []
    for regex in (COMBINED, ALONE_N, ALONE_M):
        for match in regex.finditer(note.text):
            if any(s < match.end() and match.start() < e for s, e in taken):
                continue
            if _NOT_A_STAGE.match(note.text[match.end() :]):
                continue
            if note.negated(match.start(), match.end(), words_before=2, after=False):
                continue  # "no M1 disease", "no T3 features"
            if _SUPERSEDED.search(note.before(match.start(), 40)):
                continue  # "pT2 (previously reported pT1c)"
            if match.groupdict().get("tpre") == "C" and match.groupdict().get("n") is None:
                continue  # "CT2" alone may be a CT scan; "CT2 CN1 M0" is a stage
            taken.append(match.span())
            stages.extend(_components(note, match))
    return sorted(stages, key=lambda s: s.evidence.start)


def _components(note: Note, match: re.Match[str]) -> list[Stage]:
    groups = match.groupdict()
    inherited = _context_prefix(note, match.start())
    out = []
    for kind, key in (("T", "t"), ("N", "n"), ("M", "m")):
        value = groups.get(key)
        if value is None:
            continue
        own = groups.get(f"{key}pre")
        prefix = _PREFIXES.get(own, own) if own is not None else inherited
        inherited = prefix
        mi = groups.get("mi") if key == "n" else None
        start = match.start(f"{key}pre") if own is not None else match.start(key) - 1
        end = match.end("mi") if mi else match.end(key)
        out.append(_stage(note, (start, end), kind, prefix, value, mi))
    return out


def _stage(
    note: Note, span: tuple[int, int], kind: str, prefix: str, value: str, mi: str | None
) -> Stage:
    start, end = span
    written = note.original[start:end]
    norm = value.upper() if value in ("x", "X") else value.lower()
    suffix = "mi" if mi else ""
    return Stage(
        kind=kind,
        prefix=prefix,
        value=f"{kind}{norm}{suffix}",
        evidence=Evidence(written, start, end),
        in_history=note.in_history(start),
    )


def _context_prefix(note: Note, position: int) -> str:
    """The prefix an unprefixed stage takes from the words before it in its sentence."""
    before = note.before(position, 80)
    if _YP_CONTEXT.search(before):
        return "yp"
    path, clinical = _PATH_CONTEXT.search(before), _CLINICAL_CONTEXT.search(before)
    if path and (not clinical or path.start() > clinical.start()):
        return "p"
    return "c" if clinical else ""


def metastases_absent(note: Note) -> Evidence | None:
    """Where the note says staging found no distant metastases (read as M0)."""
    match = _NO_METASTASES.search(note.text)
    if match is None:
        return None
    return Evidence(note.original[match.start() : match.end()], match.start(), match.end())
