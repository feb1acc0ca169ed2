"""The deterministic extractor: every fact of a note with the span it was read from."""

from __future__ import annotations

import re
from typing import TypeVar

from engines.clinical.facts import ClinicalFacts, Evidence, Stage
from engines.clinical.laterality import find_laterality
from engines.clinical.nodes import find_positive_nodes
from engines.clinical.prostate import find_gleason, find_grade_group, find_psa, find_svi
from engines.clinical.staging import metastases_absent, parse_stages
from engines.clinical.surgery import find_surgery
from engines.clinical.text import RELATIVE, Note

_SITE_WORDS = {
    "breast": re.compile(
        r"\b(breast|mamma\w*|mama|brust\w*|seno|sein|mastectom\w*|lumpectom\w*|WLE|DCIS|IDC|ILC|"
        r"HER2|axill\w*|quadrantectom\w*|wide local excision|SLNB|mammo\w*)\b",
        re.IGNORECASE,
    ),
    "prostate": re.compile(
        r"\b(prostat\w*|i?PSA|Gleason|ISUP|seminal|RALP|RARP|RRP|PCa|CaP)\b",
        re.IGNORECASE,
    ),
}
_AGE = (
    re.compile(r"\b(\d{1,3})\s*-?\s*(?:years?|yrs?)\s*-?\s*old\b", re.IGNORECASE),
    re.compile(r"\b(\d{1,3})\s*-?\s*(?:yo|y/o|y\.o\.)(?=[FM]?\b|\s|,|$)", re.IGNORECASE),
    re.compile(r"\b(\d{1,3})\s+(?:years?|yrs?)\s+of\s+age\b", re.IGNORECASE),
    re.compile(r"(?<![\w/])[FM]\s*/\s*(\d{2,3})\b"),  # "F/52", "M/68"
    re.compile(  # "58 female", "Patient is 70."
        r"\b(\d{2,3})\s*-?\s*(?:female|male|woman|man|lady|gentleman)\b"
        r"|\b(?:patient|pt)\s*,?\s*(\d{2,3})\b(?=\s*[.,;)])"
        r"|\b(?:patient|pt|she|he|and)\s+is\s+(?:now\s+)?(\d{2,3})\b"
        r"(?!\s*(?:mm|cm|%|ng|kg|weeks?|months?|days?|hours?|cycles?|fractions?|years?\s+(?:post|after|since|from)))",
        re.IGNORECASE,
    ),
    re.compile(  # "Female 53.", "Gentleman, 59 years"
        r"\b(?:female|male|woman|man|lady|gentleman)\s*,?\s*(\d{2,3})\b"
        r"(?!\s*(?:mm|cm|%|ng|kg|y(?:ea)?rs?\s+ago))",
        re.IGNORECASE,
    ),
    re.compile(  # "Re: Mrs J Smith, 59." / "Mr. Y, 69."
        r"\b(?:Mr|Mrs|Ms|Miss)\.?\s+[A-Z][\w'-]*(?:\s+[A-Z][\w'-]*)?(?:,\s*|\s*\()(\d{2,3})\b"
        r"(?!\s*(?:mm|cm|%|ng|y(?:ea)?rs?\s+ago))"
    ),
    re.compile(
        r"\b(?:age|aged|alter)(?:\s+at\s+\w+)?\s*[:=|]?\s*(\d{1,3})\b",
        re.IGNORECASE,
    ),
    re.compile(
        r"\b(\d{1,3})\s*-?\s*(?:Jahre|j\u00e4hrige?[nr]?|anni|ans|a\u00f1os)\b", re.IGNORECASE
    ),
    re.compile(r"\(\s*(\d{1,3})\s*(?:years?|yrs?|y)\s*\)", re.IGNORECASE),
    re.compile(r"\b(\d{1,3})\s*J\.(?=\s|,)"),
)
# Read only when none of the forms above occurs: "59F", "60 y,".
_AGE_WEAK = (
    re.compile(r"(?<![\w/])(\d{2})\s?(?:F|M)\b(?![\w/])"),
    re.compile(r"(?<![\w/.])(\d{2})\s?y\b(?=[ \t]*(?:[.,;)]|$))", re.MULTILINE),
    re.compile(r"(?<![\w/.])(\d{2})\s?(?:yrs?|years?)\b(?=\s*[.,;)])", re.IGNORECASE),
    # "Prostate, 68." at the start of a line: a heading and a bare age
    re.compile(r"^[ \t]*[A-Z][A-Za-z ]{0,30},[ \t]*(\d{2})(?=[ \t]*[.;,])", re.MULTILINE),
)
WEAK_AGE_MIN = 18  # a terse "10 years." is more likely a duration than an adult's age
_NEOADJUVANT = re.compile(
    r"\b(neo-?adj\w*|pre-?op\w*\s+(?:chemo\w*|systemic|therapy|treatment|endocrine)|"
    r"primary (?:systemic )?(?:therapy|treatment|chemotherapy)|NACT|post-?NACT)\b",
    re.IGNORECASE,
)
V = TypeVar("V")
# Offered, discussed or declined is not given; "plan: neoadjuvant ADT with RT" is.
_NOT_GIVEN = re.compile(
    r"\b(offered|discuss\w*|consider\w*|declin\w*|refus\w*|candidate|options?|if|whether|"
    r"vs\.?|versus|or)\b",
    re.IGNORECASE,
)
_NOT_GIVEN_AFTER = re.compile(
    r"^[\s\w/-]{0,40}?\b(?:was|were|is)\s+(?:not\b|recommended|offered|discussed|considered|"
    r"declined|refused|omitted|proposed)|^[\s\w/-]{0,30}?\bdeclined\b",
    re.IGNORECASE,
)
# The stage at diagnosis: clinical, else pathological, yp only when nothing else, recurrence last.
CLINICAL_FIRST = ("c", "p", "yp", "yc", "rc", "rp", "r")


def extract(text: str) -> ClinicalFacts:
    """Facts of ``text`` by rules alone (no model)."""
    note = Note.from_text(text)
    facts = ClinicalFacts()
    facts.site = _set(facts, "site", *find_site(note))
    facts.stages = parse_stages(note)
    _staging(facts, note)
    if facts.site != "prostate":  # a breast note, or one whose site is not named
        facts.laterality = _set(facts, "laterality", *find_laterality(note))
    facts.surgery = _set(facts, "surgery", *find_surgery(note, facts.site))
    facts.neoadjuvant = _set(facts, "neoadjuvant", *find_neoadjuvant(note, facts.stages))
    facts.age = _set(facts, "age", *find_age(note))
    facts.nodes_positive = _set(facts, "nodes_positive", *find_positive_nodes(note))
    if facts.site == "prostate":
        facts.psa = _set(facts, "psa", *find_psa(note))
        facts.gleason = _set(facts, "gleason", *find_gleason(note))
        facts.grade_group = _set(facts, "grade_group", *find_grade_group(note))
        facts.svi = _set(facts, "svi", *find_svi(note, facts.stages))
    return facts


def _set(facts: ClinicalFacts, name: str, value: V, evidence: Evidence | None) -> V:
    if evidence is not None and value is not None:
        facts.evidence[name] = evidence
    return value


def find_site(note: Note) -> tuple[str | None, Evidence | None]:
    """The site with more mentions (None on a tie)."""
    found = {site: list(regex.finditer(note.text)) for site, regex in _SITE_WORDS.items()}
    counts = {site: len(matches) for site, matches in found.items()}
    best = max(counts, key=lambda s: counts[s])
    if counts[best] == 0 or list(counts.values()).count(counts[best]) > 1:
        return None, None
    first = found[best][0]
    return best, Evidence(note.original[first.start() : first.end()], *first.span())


def _staging(facts: ClinicalFacts, note: Note) -> None:
    for kind in ("T", "N", "M"):
        stage = facts.stage_for(kind, CLINICAL_FIRST)
        if stage is not None:
            setattr(facts, kind, stage.value)
            facts.evidence[kind] = stage.evidence
    if facts.M is None:
        absent = metastases_absent(note)
        if absent is not None:
            facts.M, facts.evidence["M"] = "M0", absent


_TENS = {
    "twenty": 20,
    "thirty": 30,
    "forty": 40,
    "fifty": 50,
    "sixty": 60,
    "seventy": 70,
    "eighty": 80,
    "ninety": 90,
}
_UNITS = {
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
}
_AGE_WORDS = re.compile(
    rf"\b({'|'.join(_TENS)})(?:[- ]({'|'.join(_UNITS)}))?[- ]years?[- ]old\b", re.IGNORECASE
)


def _age_in_words(note: Note) -> tuple[int, Evidence] | None:
    """ "seventy-one years old" -> 71."""
    match = _AGE_WORDS.search(note.text)
    if match is None:
        return None
    age = _TENS[match.group(1).lower()] + _UNITS.get((match.group(2) or "").lower(), 0)
    return age, Evidence(note.original[match.start() : match.end()], *match.span())


def _relative_age(note: Note, match: re.Match[str]) -> bool:
    """ "mother ... at age 45", "a 10-year-old daughter": a relative's age."""
    following = note.after(match.end(), 20)
    return note.about_relative(match.start()) or bool(RELATIVE.match(following.lstrip()))


def _first_number(match: re.Match[str]) -> int:
    return int(next(g for g in match.groups() if g is not None))


def find_age(note: Note) -> tuple[int | None, Evidence | None]:
    """The first age in years (1-120) written in one of the usual forms (the terse forms
    only when no usual one occurs)."""
    for patterns in (_AGE, _AGE_WEAK):
        low = WEAK_AGE_MIN if patterns is _AGE_WEAK else 1
        found = [
            (match.start(), age, match)
            for regex in patterns
            for match in regex.finditer(note.text)
            if low <= (age := _first_number(match)) <= 120 and not _relative_age(note, match)
        ]
        if found:
            _, age, match = min(found, key=lambda f: f[0])
            return age, Evidence(note.original[match.start() : match.end()], *match.span())
        if patterns is _AGE and (words := _age_in_words(note)) is not None:
            return words
    return None, None


def _not_given(note: Note, match: re.Match[str]) -> bool:
    """Negated ("no neoadjuvant", "Neoadjuvant therapy: none"), or only offered, discussed
    or declined, before ("declined neoadjuvant") or after it ("... was recommended but")."""
    if note.negated(match.start(), match.end(), skip=1):
        return True
    before = " ".join(note.before(match.start()).split()[-4:])
    return bool(_NOT_GIVEN.search(before) or _NOT_GIVEN_AFTER.match(note.after(match.end(), 60)))


def find_neoadjuvant(note: Note, stages: list[Stage]) -> tuple[bool | None, Evidence | None]:
    """True on a neoadjuvant therapy mention (or yp staging), False when only negated."""
    negative = None
    for match in _NEOADJUVANT.finditer(note.text):
        evidence = Evidence(note.original[match.start() : match.end()], *match.span())
        if _not_given(note, match):
            negative = negative or evidence
        elif not note.in_history(match.start()):
            return True, evidence
    for stage in stages:
        if stage.prefix in ("yp", "yc", "y"):
            return True, stage.evidence
    return (False, negative) if negative is not None else (None, None)
