"""Admission control for LLM calls inside the text stage's time budget.

llama.cpp cannot be interrupted while it reads the prompt, so a deadline alone does not
bound a call. Each generator's speed is learnt from its own calls (seconds per cost unit,
an exponential moving average; a prompt token costs one unit and a generated token
``GENERATED_COST``); a call predicted to overrun what is left of the budget is not made.
"""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass
from typing import Any

from engines.llm.runtime import JsonGenerator

CHARS_PER_TOKEN = 4.0
TEMPLATE_CHARS = 80  # the system prompt and chat template around every prompt
GENERATED_COST = 2.5  # a generated token costs about 2.5 prompt tokens on CPU (measured)
SMOOTHING = 0.5
PROBE_TOKENS = 16  # room for {"ok": true} with the spaces the grammar allows
STALE_S = 120.0  # an estimate older than this is re-measured with a probe
PROBE_TEXT = (
    "Routine speed check of the local model before clinical text is processed. The reply "
    "is not used for any clinical purpose; it only measures how long reading a prompt of "
    "about this length and writing a short structured answer takes on this machine today."
)
_PROBE_SCHEMA = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}},
    "required": ["ok"],
    "additionalProperties": False,
}


@dataclass
class _Speed:
    seconds_per_unit: float
    measured_at: float


_SPEEDS: weakref.WeakKeyDictionary[Any, _Speed] = weakref.WeakKeyDictionary()


def cost_units(prompt: str, max_tokens: int) -> float:
    return (len(prompt) + TEMPLATE_CHARS) / CHARS_PER_TOKEN + GENERATED_COST * max_tokens


def predicted_s(generator: JsonGenerator, prompt: str, max_tokens: int) -> float | None:
    """Expected seconds for this call, or None before the generator was ever timed."""
    speed = _SPEEDS.get(generator)
    return None if speed is None else speed.seconds_per_unit * cost_units(prompt, max_tokens)


def is_stale(generator: JsonGenerator) -> bool:
    speed = _SPEEDS.get(generator)
    return speed is None or time.monotonic() - speed.measured_at > STALE_S


def seconds_per_unit(generator: JsonGenerator) -> float | None:
    """The learnt speed of ``generator`` (None before it was timed)."""
    speed = _SPEEDS.get(generator)
    return None if speed is None else speed.seconds_per_unit


def assume(generator: JsonGenerator, seconds_per_unit: float, age_s: float = 0.0) -> None:
    """Take a speed measured earlier (``age_s`` ago) for ``generator`` (a CLI run reuses the
    last run's measurement instead of starting the model to measure it again)."""
    _SPEEDS[generator] = _Speed(seconds_per_unit, time.monotonic() - age_s)


def observe(generator: JsonGenerator, prompt: str, max_tokens: int, seconds: float) -> None:
    """Learn from one call that took ``seconds``."""
    rate = seconds / max(1.0, cost_units(prompt, max_tokens))
    old = _SPEEDS.get(generator)
    if old is not None:
        rate = SMOOTHING * rate + (1 - SMOOTHING) * old.seconds_per_unit
    _SPEEDS[generator] = _Speed(rate, time.monotonic())


def timed_generate(
    generator: JsonGenerator,
    prompt: str,
    schema: dict[str, Any],
    max_tokens: int,
    timeout_s: float,
) -> dict[str, Any]:
    """``generator.generate_json`` that records how long the call took (also on failure)."""
    started = time.monotonic()
    try:
        return generator.generate_json(prompt, schema, max_tokens, timeout_s)
    finally:
        observe(generator, prompt, max_tokens, time.monotonic() - started)


def probe(generator: JsonGenerator, load: bool = False, timeout_s: float = 30.0) -> None:
    """A tiny timed call that measures the speed; with ``load``, an untimed one first
    (it starts the worker and loads the model, which must not count as speed)."""
    if load:
        generator.generate_json("Answer ok.", _PROBE_SCHEMA, PROBE_TOKENS, timeout_s)
    # A prompt of note-like length that shares no prefix with the last one (llama.cpp
    # reuses a cached prefix, which would make the probe look faster than a real call).
    prompt = f"{time.time_ns()} {PROBE_TEXT} Answer ok."
    timed_generate(generator, prompt, _PROBE_SCHEMA, PROBE_TOKENS, timeout_s)
