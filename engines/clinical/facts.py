"""Value objects of the text stage: evidence spans, parsed stages and the clinical facts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

FACT_FIELDS = (
    "site",
    "laterality",
    "T",
    "N",
    "M",
    "surgery",
    "neoadjuvant",
    "age",
    "psa",
    "gleason",
    "svi",
)
SITES = ("breast", "prostate")
LATERALITIES = ("left", "right", "bilateral")
SURGERIES = ("BCS", "mastectomy", "prostatectomy")


@dataclass(frozen=True)
class Evidence:
    """Where a value was read: the text as written and its character span in the note."""

    text: str
    start: int
    end: int

    def to_json(self) -> dict[str, Any]:
        return {"text": self.text, "start": self.start, "end": self.end}


@dataclass(frozen=True)
class Stage:
    """One TNM component as written: ``kind`` T/N/M, ``prefix`` c/p/yp/yc/r/"" (unstated),
    ``value`` without prefix or suffix notes (``"T1c"``, ``"N1mi"``, ``"M0"``)."""

    kind: str
    prefix: str
    value: str
    evidence: Evidence
    in_history: bool = False

    @property
    def category(self) -> str:
        """``"T1"`` for ``"T1c"``, ``"Tis"`` stays ``"Tis"``, ``"N1"`` for ``"N1mi"``."""
        return category(self.value) or self.value

    @property
    def tier(self) -> int:
        """0 clinical (or unstated), 1 pathological, 2 post-neoadjuvant, 3 recurrence."""
        return {"": 0, "c": 0, "p": 1, "yp": 2, "yc": 2, "y": 2}.get(self.prefix, 3)

    def to_json(self) -> dict[str, Any]:
        return {"stage": self.prefix + self.value, "kind": self.kind, **self.evidence.to_json()}


def category(value: str | None) -> str | None:
    """The stage category: the letter and the first digit (``"T4d"`` -> ``"T4"``)."""
    if not value:
        return None
    if value[1:3] == "is" or value[1:] == "+":
        return value[:3]
    return value[:2]


def n_number(value: str | None) -> int | None:
    """0-3 for an N stage, None when unknown or NX."""
    if value == "N+":
        return 1  # node-positive, number not given
    if not value or len(value) < 2 or not value[1].isdigit():
        return None
    return int(value[1])


@dataclass
class ClinicalFacts:
    """The facts of one note; ``evidence`` maps a field name to where it was read."""

    site: str | None = None
    laterality: str | None = None
    T: str | None = None
    N: str | None = None
    M: str | None = None
    surgery: str | None = None
    neoadjuvant: bool | None = None  # None: not mentioned (reported as false)
    age: int | None = None
    psa: float | None = None
    gleason: str | None = None
    grade_group: int | None = None
    svi: bool | None = None  # None: not mentioned (reported as false)
    nodes_positive: int | None = None  # involved nodes counted in the note ("3/14 nodes")
    stages: list[Stage] = field(default_factory=list)
    evidence: dict[str, Evidence] = field(default_factory=dict)

    def value(self, name: str) -> Any:
        return getattr(self, name)

    def primary_pattern(self) -> int | None:
        return int(self.gleason[0]) if self.gleason else None

    def effective_grade_group(self) -> int | None:
        """The grade group as written, else derived from the Gleason pattern."""
        if self.grade_group is not None or not self.gleason:
            return self.grade_group
        return grade_group_of(self.gleason)

    def stage_for(self, kind: str, prefixes: tuple[str, ...]) -> Stage | None:
        """The first current stage of ``kind`` whose prefix comes first in ``prefixes``
        (``"c"`` also takes unstated prefixes)."""
        for prefix in prefixes:
            wanted = ("", "c") if prefix == "c" else (prefix,)
            for stage in self.stages:
                if stage.kind == kind and stage.prefix in wanted and not stage.in_history:
                    return stage
        return None


def grade_group_of(gleason: str) -> int:
    """ISUP grade group of a ``"p+s"`` Gleason pattern."""
    primary, secondary = (int(x) for x in gleason.split("+"))
    total = primary + secondary
    if total <= 6:
        return 1
    if total == 7:
        return 2 if primary == 3 else 3
    return 4 if total == 8 else 5
