"""The llama.cpp runtime (engines/llm) and the renamer's checked LLM fallback.

Tests that need llama_cpp or the bundled SmolLM2 model skip when they are absent; install
them with scripts/build_llama.sh.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

from engines.llm import LlamaRuntime, LLMError, LLMTimeout, LLMUnavailable, LLMWorker, available
from engines.llm.models import bundled_model_path
from engines.naming.decision import LLM
from engines.naming.llm_fallback import llm_schema, validate_answer
from engines.naming.renamer import Renamer
from engines.naming.vocabulary import load_vocabulary

HAS_LLAMA = importlib.util.find_spec("llama_cpp") is not None
MODEL = bundled_model_path()
needs_llama = pytest.mark.skipif(not HAS_LLAMA, reason="llama_cpp not installed")
needs_model = pytest.mark.skipif(not (HAS_LLAMA and MODEL), reason="llama_cpp or model absent")


class FakeLLM:
    """A JsonGenerator that answers what it is told and records the schemas it saw."""

    def __init__(self, answer: str | None = None, error: Exception | None = None) -> None:
        self.answer, self.error = answer, error
        self.schemas: list[dict[str, Any]] = []

    def generate_json(
        self, prompt: str, schema: dict[str, Any], max_tokens: int = 64, timeout_s: float = 30.0
    ) -> dict[str, Any]:
        self.schemas.append(schema)
        if self.error is not None:
            raise self.error
        enum = schema["properties"]["answer"]["enum"]
        return {"answer": self.answer or enum[0]}


def test_no_model_means_rules_only() -> None:
    assert available(None) is False
    assert available("") is False


def test_configured_model_without_llama_cpp_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llama_cpp" else real(name, *a),
    )
    with pytest.raises(LLMUnavailable, match=r"build_llama\.sh"):
        available("/models/any.gguf")


@needs_llama
def test_missing_model_file_fails_loudly(tmp_path: Path) -> None:
    with pytest.raises(LLMUnavailable, match="not found"):
        available(tmp_path / "missing.gguf")


def test_llm_only_settles_what_rules_cannot() -> None:
    fake = FakeLLM("PenileBulb")
    renamer = Renamer(load_vocabulary(), llm=fake)
    assert renamer.decide("L Parotid").method != LLM
    assert fake.schemas == []  # rules settled it: no call
    decision = renamer.decide("pb")  # ProstateBed or PenileBulb: the rules cannot choose
    assert decision.method == LLM and decision.new_name == "PenileBulb"
    assert decision.confidence < 0.9
    assert fake.schemas[0]["properties"]["answer"]["enum"] == ["ProstateBed", "PenileBulb", "keep"]
    assert renamer.stats.llm_calls == 1 and renamer.stats.llm_accepted == 1


@pytest.mark.parametrize(
    ("answer", "error", "reason"),
    [
        ("keep", None, "kept the name"),
        (None, LLMTimeout("too slow"), "LLM failed"),
    ],
)
def test_llm_keep_or_failure_abstains(
    answer: str | None, error: Exception | None, reason: str
) -> None:
    renamer = Renamer(load_vocabulary(), llm=FakeLLM(answer, error))
    decision = renamer.decide("pb")
    assert decision.abstained and decision.new_name == "pb"
    assert reason in decision.reason


def test_llm_answers_are_validated() -> None:
    matcher = Renamer(load_vocabulary()).matcher
    assert validate_answer(matcher, "pb", "PenileBulb", ("ProstateBed", "PenileBulb")) == ""
    assert "laterality" in validate_answer(matcher, "L pb", "PenileBulb", ("PenileBulb",))
    assert "candidates" in validate_answer(matcher, "pb", "Lung_L", ("PenileBulb",))
    assert "category" in validate_answer(matcher, "pb", "Bladder", ("Bladder",))


def test_schema_is_a_closed_enum() -> None:
    schema = llm_schema(("Parotid_L", "Glnd_Submand_L"))
    assert schema["properties"]["answer"]["enum"] == ["Parotid_L", "Glnd_Submand_L", "keep"]
    assert schema["additionalProperties"] is False


@needs_llama
def test_worker_reports_a_broken_model_as_an_error(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"not a gguf file")
    with LLMWorker(bogus) as worker, pytest.raises(LLMError):
        worker.generate_json("hi", llm_schema(("A",)), 8, 10.0)


@needs_model
def test_real_model_constrained_output_in_enum() -> None:
    enum = ("OpticChiasm", "Cavity_Oral")
    runtime = LlamaRuntime(MODEL, n_ctx=512, n_threads=1)  # type: ignore[arg-type]
    prompt = 'Structure "oc". Choose the TG-263 name: OpticChiasm, Cavity_Oral, or keep.'
    first = runtime.generate_json(prompt, llm_schema(enum), max_tokens=24, timeout_s=120)
    assert first["answer"] in (*enum, "keep")
    again = runtime.generate_json(prompt, llm_schema(enum), max_tokens=24, timeout_s=120)
    assert again == first  # temperature 0, fixed seed: deterministic
    with pytest.raises(LLMTimeout):
        runtime.generate_json(prompt, llm_schema(enum), max_tokens=24, timeout_s=0.0)


@needs_model
def test_real_model_in_a_child_process() -> None:
    with LLMWorker(MODEL, n_ctx=512, n_threads=1) as worker:  # type: ignore[arg-type]
        reply = worker.generate_json("Pick one.", llm_schema(("Bladder", "Rectum")), 16, 120)
    assert reply["answer"] in ("Bladder", "Rectum", "keep")
