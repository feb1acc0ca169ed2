"""The ``clinical_text`` engine: ctx.clinical, job notes and the strategy SR (dciodvfy)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pydicom
import pytest

from appliance.pipeline import JobRequest, PipelineRunner
from engines.base import ClinicalDocument, EngineContext, EngineError
from engines.clinical.engine import ClinicalTextEngine
from engines.registry import create_engine
from tests.factories import make_ct_series, write_series

DCIODVFY = Path("/usr/bin/dciodvfy")
NOTE = (
    "58-year-old woman, left breast IDC, cT2 cN1 M0. Left wide local excision and axillary "
    "clearance: pT2 pN2a (5/14). No neoadjuvant chemotherapy."
)


@pytest.fixture(scope="module")
def ct_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    series = make_ct_series(n_slices=3, rows=64, cols=64, seed=5)
    return write_series(series, tmp_path_factory.mktemp("ct"))


def _ctx(tmp_path: Path, files: list[Path], docs: list[ClinicalDocument]) -> EngineContext:
    return EngineContext(
        job_id=7,
        input_files=files,
        output_dir=tmp_path / "out",
        params={"clinical_llm_model": "none"},
        clinical_documents=docs,
    )


def test_registered_as_a_pipeline_step() -> None:
    assert isinstance(create_engine("clinical_text"), ClinicalTextEngine)


def test_no_documents_no_result_no_sr(tmp_path: Path, ct_files: list[Path]) -> None:
    ctx = _ctx(tmp_path, ct_files, [])
    ClinicalTextEngine().run(ctx)
    assert ctx.clinical is None and ctx.outputs == []
    assert any("no clinical documents" in n for n in ctx.notes)


def test_documents_give_facts_strategy_notes_and_an_sr(
    tmp_path: Path, ct_files: list[Path]
) -> None:
    docs = [
        ClinicalDocument("SR 1.2.3", NOTE, "2026-11-01T10:00:00Z"),
        ClinicalDocument("submit-text", "Plan: adjuvant RT.", "2026-11-02T10:00:00Z"),
    ]
    ctx = _ctx(tmp_path, ct_files, docs)
    ClinicalTextEngine().run(ctx)
    assert ctx.clinical is not None
    assert (ctx.clinical["laterality"], ctx.clinical["T"], ctx.clinical["N"]) == (
        "left",
        "T2",
        "N1",
    )
    assert ctx.clinical["strategy"]["scl_guideline"] == "RTOG"  # from pN2a
    assert ctx.clinical["protocol_rules"]["scl_guideline"] == "BR-SCL-RTOG"
    assert any("SR 1.2.3, submit-text" in n for n in ctx.notes)
    assert any("protocol rules" in n and "BR-RNI-NPOS" in n for n in ctx.notes)
    [path] = ctx.outputs
    sr = pydicom.dcmread(path)
    ct = pydicom.dcmread(ct_files[0], stop_before_pixels=True)
    assert sr.StudyInstanceUID == ct.StudyInstanceUID
    assert sr.SeriesInstanceUID != ct.SeriesInstanceUID and sr.Manufacturer == "rtnode"
    assert "AI draft" in sr.ContentSequence[0].TextValue
    refs = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert refs.SeriesInstanceUID == ct.SeriesInstanceUID
    assert len(refs.ReferencedSOPSequence) == len(ct_files)
    strategy = {
        i.ConceptNameCodeSequence[0].CodeMeaning: i.TextValue
        for i in sr.ContentSequence[3].ContentSequence
    }
    assert strategy["scl_guideline"] == "RTOG [rule BR-SCL-RTOG]"


def test_prostate_sr_has_num_items(tmp_path: Path, ct_files: list[Path]) -> None:
    doc = ClinicalDocument("PDF Überweisung", "71 yo man, prostate, PSA 8.1 µg/L, Gleason 4+3.")
    ctx = _ctx(tmp_path, ct_files, [doc])
    ClinicalTextEngine().run(ctx)
    sr = pydicom.dcmread(ctx.outputs[0])
    facts = sr.ContentSequence[2].ContentSequence
    nums = {i.ConceptNameCodeSequence[0].CodeMeaning: i for i in facts if i.ValueType == "NUM"}
    psa = nums["psa"].MeasuredValueSequence[0]
    assert psa.NumericValue == "8.1"
    assert psa.MeasurementUnitsCodeSequence[0].CodeValue == "ng/mL"
    assert sr.SpecificCharacterSet == "ISO_IR 192"
    assert "PDF Überweisung" in sr.ContentSequence[5].ContentSequence[0].TextValue


def test_without_ct_the_result_stands_and_no_sr_is_written(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, [], [ClinicalDocument("submit-text", NOTE)])
    ClinicalTextEngine().run(ctx)
    assert ctx.clinical is not None and ctx.outputs == []
    assert any("no CT" in n for n in ctx.notes)


@pytest.mark.skipif(not DCIODVFY.exists(), reason="dciodvfy not installed")
def test_sr_passes_dciodvfy(tmp_path: Path, ct_files: list[Path]) -> None:
    ctx = _ctx(tmp_path, ct_files, [ClinicalDocument("SR 1.2.3", NOTE)])
    ClinicalTextEngine().run(ctx)
    result = subprocess.run(
        [str(DCIODVFY), str(ctx.outputs[0])],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    report = (result.stdout + result.stderr).splitlines()
    errors = [line for line in report if line.startswith("Error")]
    assert errors == [], "\n".join(report)


def test_an_explicit_model_that_cannot_start_fails_the_step(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, [], [ClinicalDocument("submit-text", NOTE)])
    ctx.params["clinical_llm_model"] = str(tmp_path / "missing.gguf")
    with pytest.raises(EngineError, match=r"missing\.gguf"):
        ClinicalTextEngine().run(ctx)


def test_through_the_worker_pipeline(tmp_path: Path, ct_files: list[Path]) -> None:
    request = JobRequest(
        job_id=3,
        pipeline=["clinical_text"],
        input_files=[str(p) for p in ct_files],
        output_dir=str(tmp_path / "job"),
        params={"clinical_llm_model": "none"},
        clinical_documents=[ClinicalDocument("SR 1.2.3", NOTE, "2026-11-01T10:00:00Z")],
    )
    result = PipelineRunner().run(request)
    assert result.ok, result.error
    [sr] = result.outputs
    assert pydicom.dcmread(sr).Modality == "SR"
    assert any("BR-SCL-RTOG" in n for n in result.notes)
