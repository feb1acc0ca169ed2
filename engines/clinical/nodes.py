"""Involved lymph nodes when the note counts them instead of staging them.

"3/14 nodes involved", "11 of 20 nodes positive", "Sentinel nodes: 0/3", "5/17 LN+",
"node-negative". The N field stays as written; the count only lets the nodal rules of the
strategy decide when no N stage is written (pN from the count: 0 -> N0, 1-3 -> N1,
4-9 -> N2, 10 or more -> N3).
"""

from __future__ import annotations

import re

from engines.clinical.facts import Evidence
from engines.clinical.text import Note

_NODE = r"(?:(?:sentinel|axillary|lymph|regional)\s+){0,2}(?:nodes?|LNs?|SLNs?|SNs?)"
_COUNTS = (
    re.compile(
        rf"\b(\d{{1,2}})\s*(?:/|of|out of)\s*(\d{{1,2}})\s+(?:\w+\s+){{0,2}}?{_NODE}\s*"
        r"(?:\+|(?:were\s+|are\s+)?(?:positive|involved|with\s+(?:\w+\s+)?(?:macro|micro)?metasta))",
        re.IGNORECASE,
    ),
    re.compile(
        rf"\b{_NODE}\s*(?:\w+\s*)?:?\s*(\d{{1,2}})\s*/\s*(\d{{1,2}})(?!\s*(?:mm|cm))",
        re.IGNORECASE,
    ),
)
_STATUS = re.compile(r"\bnode[- ](positive|negative)\b", re.IGNORECASE)


def find_positive_nodes(note: Note) -> tuple[int | None, Evidence | None]:
    """The largest count of involved nodes written (a later dissection adds to nothing:
    the largest count is the pathological status), or 0/1 from node-negative/-positive."""
    counts = []
    for regex in _COUNTS:
        for match in regex.finditer(note.text):
            involved, total = int(match.group(1)), int(match.group(2))
            if involved <= total and not note.in_history(match.start()):
                counts.append((involved, _evidence(note, match)))
    if counts:
        return max(counts, key=lambda c: c[0])
    status = _STATUS.search(note.text)
    if status is None or note.negated(status.start(), status.end(), after=False):
        return None, None
    return (1 if status.group(1).lower() == "positive" else 0), _evidence(note, status)


def n_from_count(involved: int) -> int:
    """AJCC pN number of ``involved`` axillary nodes."""
    if involved == 0:
        return 0
    return 1 if involved <= 3 else 2 if involved <= 9 else 3


def _evidence(note: Note, match: re.Match[str]) -> Evidence:
    return Evidence(note.original[match.start() : match.end()], match.start(), match.end())
