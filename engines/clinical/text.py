"""Note text helpers: normalisation, sentences, negation, history and injected instructions.

Every helper keeps character offsets of the original note, so evidence spans point into the
text the user gave.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_SAME_LENGTH = str.maketrans(
    {
        "\u2010": "-",
        "\u2011": "-",
        "\u2012": "-",
        "\u2013": "-",
        "\u2014": "-",
        "\u2212": "-",
        "\u00a0": " ",
        "\u2009": " ",
        "\u2018": "'",
        "\u2019": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\t": " ",
        "\r": " ",
    }
)
# Sentence ends: ". " / "; " / "! " / "? ", a blank line, or a new line that starts with a
# heading ("Path:", "MRI:") or a bullet. A plain line break is a wrapped line, not an end.
# Not after abbreviations ("Rt. breast", "Dr. Lee", "vs. mastectomy", "62 y.o. woman").
_ABBREVIATION_END = "".join(
    f"(?<!{a})"
    for a in (
        r"\bRt\.",
        r"\bLt\.",
        r"\blt\.",
        r"\brt\.",
        r"\bDr\.",
        r"\bMr\.",
        r"\bMs\.",
        r"Mrs\.",
        r"\bvs\.",
        r"\bca\.",
        r"e\.g\.",
        r"i\.e\.",
        r"y\.o\.",
        r"\bNo\.",
        r"\bSt\.",
        r"\bPt\.",
        r"Bilat\.",
        r"approx\.",
    )
)
_SENTENCE_END = re.compile(
    rf"(?<=[;!?])\s+(?=\S)|(?<=\.){_ABBREVIATION_END}\s+(?=[^\s,;:)])|\n\s*\n"
    r"|\n(?=\s*[-*\u2022])|\n(?=\s*[A-Za-z][\w /()&-]{0,30}:)"
)
# Text addressed to a model, not about the patient. Narrow on purpose: a false hit blanks a
# real sentence ("Pathology report: Gleason 4+3" must stay; "you are a candidate" too).
_INSTRUCTION = re.compile(
    r"\b(ignore|disregard|forget|override)\b[^.\n]{0,40}\b(instructions?|prompts?|rules|above)\b"
    r"|\byou are now\b|\byou are an? (AI|assistant|language model|LLM|chatbot)\b|\bact as an?\b"
    r"|^\W*(system|assistant)\s*:|\bnew instructions?\b|\bprompt injection\b"
    r"|\b(please|now|instead|must|should)\s+(output|answer|respond|reply|print|return|say|write|"
    r"report|set|mark|classify)\b"
    r"|^\W*(output|respond|reply|print)\b",
    re.IGNORECASE,
)
NEGATION_BEFORE = re.compile(
    r"\b(no|not|without|negative for|free of|absence of|absent|denies|neither|nor|never|"
    r"non|kein|keine|keinen|senza|nessun[ao]?|sans|pas de|sin)\b[^.;]*$",
    re.IGNORECASE,
)
NEGATION_AFTER = re.compile(
    r"^\W{0,3}(is |are |was |were )?(negative|neg\b|not\b(?!\s+(?:tolerated|completed|finished))|"
    r"absent|uninvolved|free\b|clear\b|"
    r"normal|unremarkable|benign|none\b|no\b|\(-\)|-ve\b|unauff\w*|negativ\w*|n/a\b|nil\b|"
    r"not applicable)",
    re.IGNORECASE,
)
PLANNED = re.compile(
    r"\b(plan\w*|will|scheduled|booked|listed for|awaiting|to undergo)\b", re.IGNORECASE
)
DONE = re.compile(  # "after MDT discussion she underwent ...": what follows was done
    r"\b(?:underwent|had|has had|performed|s/p|status post|proceeded to|received|completed|"
    r"chose|opted for|elected)\b",
    re.IGNORECASE,
)
OPTION = re.compile(  # offered or weighed, not decided
    r"\b(would|candidate|options?|discuss\w*|consider\w*|recommend\w*|offered|declined|"
    r"refused|prefer\w*|versus|vs\.?|or|if|whether|alternatives?)\b",
    re.IGNORECASE,
)
# An earlier disease: "history of", "hx", "previous/prior breast cancer"; not "as previously
# discussed", "prior to RT" or "prior neoadjuvant chemotherapy" (this disease, earlier).
HISTORY = re.compile(
    r"\b((?<!family )(?<!social )history(?!\s+of\s+present)|hx\s+of|h/o|past|remote|"
    r"(?:previous(?:ly)?|prior)(?=\s+(?:[\w-]+\s+){0,2}"
    r"(?:cancer|carcinoma|ca\b|DCIS|malignan\w*|diagnos\w*|history|breast|primary|tumou?r|"
    r"treated|treatment\s+for)))",
    re.IGNORECASE,
)
RELATIVE = re.compile(
    r"\b(mother|father|sister|brother|daughter|son|aunt|uncle|grandmother|grandfather|cousin|"
    r"niece|nephew|maternal|paternal|husband|wife|partner|spouse|Mutter|Schwester)\b"
    r"(?!\s+of\b)",  # "mother of two" is the patient
    re.IGNORECASE,
)
OTHER_DISEASE = re.compile(  # about the other breast or a non-cancer finding (laterality only)
    r"\b(contralateral|prophylactic|risk[- ]reducing|benign)\b", re.IGNORECASE
)
CURRENT = re.compile(r"\b(now|new|current|currently|presents?|this)\b", re.IGNORECASE)


@dataclass(frozen=True)
class Note:
    """A note ready for matching: ``text`` has the original length and offsets; instruction
    sentences (prompt injection) are blanked out in it and listed in ``masked``."""

    original: str
    text: str
    sentences: tuple[tuple[int, int], ...]
    masked: tuple[tuple[int, int], ...]

    @classmethod
    def from_text(cls, original: str) -> Note:
        normal = _dehyphenate(original.translate(_SAME_LENGTH))
        spans = tuple(_sentence_spans(normal))
        masked = tuple(s for s in spans if _INSTRUCTION.search(normal[s[0] : s[1]]))
        chars = list(normal)
        for start, end in masked:
            chars[start:end] = " " * (end - start)
        return cls(original, "".join(chars), spans, masked)

    def sentence_of(self, position: int) -> tuple[int, int]:
        """The span of the sentence holding ``position``."""
        for start, end in self.sentences:
            if start <= position < end:
                return start, end
        return 0, len(self.text)

    def sentence_text(self, position: int) -> str:
        start, end = self.sentence_of(position)
        return self.text[start:end]

    def before(self, position: int, chars: int = 60) -> str:
        """Text of the same sentence before ``position`` (at most ``chars``)."""
        start, _ = self.sentence_of(position)
        return self.text[max(start, position - chars) : position]

    def after(self, position: int, chars: int = 40) -> str:
        """Text of the same sentence after ``position`` (at most ``chars``)."""
        _, end = self.sentence_of(position)
        return self.text[position : min(end, position + chars)]

    def negated(
        self, start: int, end: int, words_before: int = 5, after: bool = True, skip: int = 0
    ) -> bool:
        """Whether a negation cue governs the match ``[start, end)`` (NegEx-style window:
        a cue in the few words before it, or, unless ``after`` is false, right after it,
        possibly past ``skip`` plain words: "SVI on MRI negative" with ``skip=2``)."""
        before = " ".join(self.before(start).split()[-words_before:])
        before = re.split(r"[,:(]|\bbut\b|\bhowever\b", before)[-1]
        if NEGATION_BEFORE.search(before):
            return True
        following = self.after(end, 60)
        skipped = re.match(rf"^\s*(?:[A-Za-z/-]+:?\s+){{0,{skip}}}", following) if skip else None
        if skipped is not None and NEGATION_AFTER.search(following[skipped.end() - 1 :]):
            return after
        return after and bool(NEGATION_AFTER.search(following))

    def intention(self, start: int, words_before: int = 6) -> str:
        """``option`` (offered, discussed, one of several), ``planned``, or "" (done), from
        the words before ``start`` in its clause."""
        before = " ".join(self.before(start).split()[-words_before:])
        clause = DONE.split(re.split(r"[,;]|\bbut\b", before)[-1])[-1]
        if OPTION.search(clause):
            return "option"
        return "planned" if PLANNED.search(clause) else ""

    def in_history(self, position: int, other_disease: bool = False) -> bool:
        """The sentence is about an earlier disease (with ``other_disease``, the clause is
        about the other breast or a benign finding), not the current one."""
        sentence = self.sentence_text(position)
        cue = HISTORY.search(sentence) or (
            other_disease and OTHER_DISEASE.search(self.clause(position))
        )
        if self.about_relative(position):
            return True
        return bool(cue) and not CURRENT.search(sentence)

    def about_relative(self, position: int) -> bool:
        """A relative is named before ``position`` in its clause ("mother had left breast
        cancer at 45"): what follows is family history, not the patient."""
        start, _ = self.sentence_of(position)
        before = re.split(r"[,;]", self.text[start:position])[-1]
        return bool(RELATIVE.search(before))

    def clause(self, position: int) -> str:
        """The part of the sentence between commas or semicolons around ``position``."""
        start, end = self.sentence_of(position)
        before = re.split(r"[,;]", self.text[start:position])[-1]
        after = re.split(r"[,;]", self.text[position:end])[0]
        return before + after


# A word broken across lines by a PDF text layer ("mastec-\ntomy"), not a compound
# ("left-\nsided", "breast-\nconserving"), whose first part is a word of its own.
_BROKEN_WORD = re.compile(r"\b([A-Za-z]{2,})-[ \t]*\n[ \t]*([a-z]+)")
_COMPOUND_FIRST = {
    "left",
    "right",
    "node",
    "breast",
    "well",
    "high",
    "low",
    "non",
    "post",
    "pre",
    "self",
    "triple",
    "skin",
    "nipple",
    "wire",
    "sentinel",
    "dose",
    "short",
    "long",
    "risk",
    "co",
    "re",
    "ultra",
    "hypo",
    "hyper",
    "sub",
    "intra",
    "extra",
    "multi",
    "bi",
    "uni",
    "neo",
}


def _dehyphenate(text: str) -> str:
    """Join words broken across lines, keeping every offset after the word (the removed
    hyphen and line break become spaces after it)."""

    def join(match: re.Match[str]) -> str:
        head, tail = match.group(1), match.group(2)
        if head.lower() in _COMPOUND_FIRST:
            return match.group(0)
        return head + tail + " " * (len(match.group(0)) - len(head) - len(tail))

    return _BROKEN_WORD.sub(join, text)


def _sentence_spans(text: str) -> list[tuple[int, int]]:
    spans, start = [], 0
    for match in _SENTENCE_END.finditer(text):
        if match.start() > start:
            spans.append((start, match.start()))
        start = match.end()
    if start < len(text):
        spans.append((start, len(text)))
    return spans


def number(text: str) -> float:
    """A decimal written with a point or a comma (``"9,4"`` -> 9.4)."""
    return float(text.replace(",", "."))
