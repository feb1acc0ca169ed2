"""Target names: GTV/CTV/ITV/PTV with classifier, index, level and dose (TG-263 style).

``PTV 70Gy`` -> ``PTV_70Gy``, ``ptv_5040`` -> ``PTV_5040``, ``PTVn 70`` -> ``PTVn_70Gy``,
``ctv1`` -> ``CTV1``, ``ptv high`` -> ``PTV_High``, ``PTV 50.4 Gy`` -> ``PTV_50p4Gy``. A bare
dose of 10..100 is read as Gy and written with its unit; 1000..10000 as cGy, written bare.
Anything else in the name (a side, an organ, a ring, initials) makes the builder give up:
those names are kept as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

from engines.naming.lexicon import Kind, Word

INTERPRETED_TYPES = {"GTV": "GTV", "CTV": "CTV", "ITV": "CTV", "PTV": "PTV"}


@dataclass(frozen=True)
class TargetName:
    name: str
    interpreted_type: str
    dropped: int  # noise words left out (initials make the builder give up)


@dataclass
class _State:
    kind: str = ""
    classifier: str = ""
    index: str = ""
    level: str = ""
    dose: str = ""
    dropped: int = 0
    last: str = ""  # what the previous consumed word was


def build_target(
    words: list[Word], classifiers: dict[str, str], levels: dict[str, str]
) -> TargetName | None:
    """The TG-263 target name for ``words``, or ``None`` when they say more than a target."""
    state = _State()
    numbers = _pair_numbers(words)
    for index, word in enumerate(words):
        if not _consume(state, word, numbers.get(index), classifiers, levels):
            return None
    if not state.kind:
        return None
    name = f"{state.kind}{state.classifier}{state.index}"
    name += f"_{state.level}" if state.level else ""
    name += f"_{state.dose}" if state.dose else ""
    return TargetName(name, INTERPRETED_TYPES[state.kind], state.dropped)


def _pair_numbers(words: list[Word]) -> dict[int, str]:
    """Index of each number -> the unit that follows it ("" when none)."""
    paired: dict[int, str] = {}
    for index, word in enumerate(words):
        if word.kind is Kind.NUMBER:
            following = words[index + 1] if index + 1 < len(words) else None
            unit = following.text if following and following.kind is Kind.UNIT else ""
            paired[index] = unit
    return paired


def _consume(
    state: _State,
    word: Word,
    unit: str | None,
    classifiers: dict[str, str],
    levels: dict[str, str],
) -> bool:
    text = word.text
    if word.kind is Kind.TARGET:
        if state.kind:
            return False
        state.kind, state.last = text.upper(), "type"
        return True
    if not state.kind:
        return word.kind is Kind.NOISE and _drop(state)
    if word.kind is Kind.UNIT:
        return state.last == "number"
    if word.kind is Kind.NUMBER:
        return _number(state, text, unit or "")
    if text in classifiers and state.last == "type" and not state.classifier:
        state.classifier, state.last = classifiers[text], "classifier"
        return True
    if text in levels and not state.level:
        state.level, state.last = levels[text], "level"
        return True
    return word.kind is Kind.NOISE and _drop(state)


def _drop(state: _State) -> bool:
    state.dropped += 1
    return True


def _number(state: _State, text: str, unit: str) -> bool:
    if not unit and text.isdigit() and len(text) == 1 and state.last in ("type", "classifier"):
        if state.index:
            return False
        state.index, state.last = text, "index"
        return True
    dose = format_dose(text, unit)
    if dose is None or state.dose:
        return False
    state.dose, state.last = dose, "number"
    return True


def format_dose(text: str, unit: str) -> str | None:
    """TG-263 dose text: Gy with unit and ``p`` for the decimal point, cGy bare."""
    value = float(text)
    if unit == "cgy" or (not unit and "." not in text and 1000 <= value <= 10000):
        return f"{round(value)}" if 100 <= value <= 10000 else None
    if unit in ("gy", "") and 1 <= value <= 100 and (unit or value >= 10 or "." in text):
        shown = f"{value:.2f}".rstrip("0").rstrip(".")
        return f"{shown.replace('.', 'p')}Gy"
    return None
