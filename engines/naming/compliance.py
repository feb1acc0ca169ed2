"""Is a name already TG-263? Such names come out of the renamer unchanged.

A name is compliant when it is a vocabulary (or loaded worksheet) name, or when it is
written in TG-263 syntax and is either structured (two or more CamelCase parts such as
``Brachial_Plex_R``), a target (``PTVp1_CT1PT1``, ``PTV_50p4Gy``), a ``z`` helper
(``zOptPTV_High``), or a vocabulary name with TG-263 suffixes (``Brainstem_PRV03``,
``Lung~_L``, ``Lungs^Ex``, ``Kidney_L-GTV``, ``Bolus_09mm``). Single words outside the
vocabulary ("Cord", "Bladdder") are not compliant: the matcher reads them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_ALLOWED = re.compile(r"^[A-Za-z0-9_\-~^.!]+$")
_PARTS = re.compile(r"[_\-~!.]+")
_HUMPS = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+")
_TARGET = re.compile(r"^z?(?:[A-Z][a-z]*)*?(GTV|CTV|ITV|PTV|IDL)")
_PRV = re.compile(r"^PRV\d*$")
_THICKNESS = re.compile(r"^\d{2}mm$")
_SIDES = frozenset({"L", "R"})
# upper-case humps that TG-263 names and targets use
BASE_ACRONYMS = frozenset(
    {
        "GTV",
        "CTV",
        "ITV",
        "PTV",
        "PRV",
        "IDL",
        "LN",
        "CN",
        "VB",
        "TM",
        "SG",
        "LAD",
        "IMN",
        "LUL",
        "LLL",
        "RUL",
        "RML",
        "RLL",
        "CT",
        "MR",
        "PT",
        "PET",
        "US",
        "ICG",
        "NAdj",
        "I",
        "II",
        "III",
        "IV",
        "V",
        "VI",
        "VII",
        "VIII",
        "IX",
        "X",
        "XI",
        "XII",
        "IA",
        "IB",
        "IIA",
        "IIB",
        "VA",
        "VC",
        "LI",
        "RI",
        "L",
        "R",
        "S",
        "M",
        "C",
        "T",
        "A",
    }
)


class ComplianceChecker:
    """Decides compliance against a set of vocabulary names (see the module docstring)."""

    def __init__(
        self,
        names: Iterable[str],
        side_words: Iterable[str] = (),
        extra_acronyms: Iterable[str] = (),
    ) -> None:
        self.names = frozenset(names)
        self.side_words = frozenset(w.lower() for w in side_words) - {"l", "r"}
        self.acronyms = BASE_ACRONYMS | frozenset(extra_acronyms) | self._acronyms_of(self.names)

    @staticmethod
    def _acronyms_of(names: Iterable[str]) -> frozenset[str]:
        found = set()
        for name in names:
            for hump in _HUMPS.findall(name):
                if len(hump) >= 2 and hump.isupper():
                    found.add(hump)
        return frozenset(found)

    def is_compliant(self, name: str) -> bool:
        if name in self.names:
            return True
        if not _ALLOWED.match(name) or not self._syntax_ok(name):
            return False
        head = name.split("^", 1)[0]
        parts = [p for p in _PARTS.split(head) if p]
        if not parts:
            return False
        return (
            name.startswith("z")
            or bool(_TARGET.match(head))
            or self._vocabulary_based(parts)
            or self._structured(parts)
        )

    def _syntax_ok(self, name: str) -> bool:
        head = name.split("^", 1)[0]
        for index, part in enumerate(p for p in _PARTS.split(head) if p):
            body = part[1:] if index == 0 and part.startswith("z") and len(part) > 1 else part
            if part.lower() in self.side_words:
                return False
            if not (body[0].isupper() or body[0].isdigit()):
                return False
            if any(
                h.isupper() and len(h) >= 2 and h not in self.acronyms for h in _HUMPS.findall(body)
            ):
                return False
        return True

    def _vocabulary_based(self, parts: list[str]) -> bool:
        for size in range(len(parts), 0, -1):
            if "_".join(parts[:size]) in self.names:
                rest = parts[size:]
                return all(_suffix_ok(p) for p in rest)
        return False

    @staticmethod
    def _structured(parts: list[str]) -> bool:
        words = [p for p in parts if p.isalpha() and p not in _SIDES and not _PRV.match(p)]
        return len(words) >= 2


def _suffix_ok(part: str) -> bool:
    return (
        part in _SIDES
        or bool(_PRV.match(part))
        or bool(_THICKNESS.match(part))
        or bool(_TARGET.match(part))
        or (part[0].isupper() and part.isalnum())
    )
