"""Clinical text from DICOM SR content trees and Encapsulated PDF text layers."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from dicom_node.text_extract import (
    MAX_DEPTH,
    ExtractedText,
    TextExtractionError,
    pdf_text,
    sr_text,
)
from tests.factories import (
    make_ct_series,
    make_encapsulated_pdf,
    make_structured_sr,
    make_text_sr,
    minimal_pdf,
    sr_item,
    write_dataset,
)


def _consult() -> Dataset:
    return make_structured_sr(
        [
            sr_item(
                "CONTAINER",
                "History",
                children=[
                    sr_item("TEXT", "Presenting complaint", "Lump in the left breast."),
                    sr_item("NUM", "Age", ("54", "a")),
                    sr_item(
                        "CONTAINER",
                        "Pathology",
                        children=[
                            sr_item("CODE", "Diagnosis", "Invasive ductal carcinoma of breast"),
                            sr_item("NUM", "Tumour size", ("2.3", "cm")),
                            sr_item("NUM", "Ki-67 index", ("12", "%")),
                        ],
                    ),
                ],
            ),
            sr_item("DATE", "Date of surgery", "20240301"),
            sr_item(
                "TEXT",
                "Plan",
                "Adjuvant whole-breast radiotherapy.",
                children=[sr_item("CODE", "Laterality", "Left", relationship="HAS CONCEPT MOD")],
            ),
        ],
        patient_id="P1",
        study_uid="1.2.3",
        accession_number="ACC7",
    )


def test_nested_sr_becomes_headed_text_in_document_order() -> None:
    assert sr_text(_consult()) == (
        "# Radiotherapy consultation\n"
        "## History\n"
        "Presenting complaint: Lump in the left breast.\n"
        "Age: 54 years\n"
        "### Pathology\n"
        "Diagnosis: Invasive ductal carcinoma of breast\n"
        "Tumour size: 2.3 cm\n"
        "Ki-67 index: 12 %\n"
        "Date of surgery: 2024-03-01\n"
        "Plan: Adjuvant whole-breast radiotherapy.\n"
        "  Laterality: Left"
    )


def test_extracted_text_carries_the_join_keys(tmp_path: Path) -> None:
    path = write_dataset(_consult(), tmp_path / "sr.dcm")
    doc = ExtractedText.from_file(path)
    assert (doc.kind, doc.patient_id, doc.study_uid, doc.accession_number) == (
        "SR",
        "P1",
        "1.2.3",
        "ACC7",
    )
    assert doc.source.startswith("SR 1.2.") and "Tumour size: 2.3 cm" in doc.text


@pytest.mark.parametrize("sop_class", ["basic", "enhanced", "comprehensive"])
def test_every_text_sr_class(sop_class: str) -> None:
    ds = make_text_sr("cT2 N1 M0, left breast", "P1", "1.2.3", sop_class)  # type: ignore[arg-type]
    assert ExtractedText.from_dataset(ds).text == "# Consult note\nComment: cT2 N1 M0, left breast"


def test_num_without_value_uses_its_qualifier_and_unitless_numbers_have_no_unit() -> None:
    missing = sr_item("NUM", "PSA")
    qualifier = Dataset()
    qualifier.CodeMeaning = "Value unknown"
    missing.NumericValueQualifierCodeSequence = [qualifier]
    ds = make_structured_sr([missing, sr_item("NUM", "Gleason score", ("7", "1"))])
    assert sr_text(ds).splitlines()[1:] == ["PSA: Value unknown", "Gleason score: 7"]


def test_items_without_text_are_left_out() -> None:
    image = sr_item("IMAGE", "Key image")
    ds = make_structured_sr([image, sr_item("TEXT", "Finding", "No nodes.")])
    assert sr_text(ds).splitlines()[1:] == ["Finding: No nodes."]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ([], "no text, code, number or date"),
        ([sr_item("CONTAINER", "Empty section")], "no text, code, number or date"),
        ([sr_item("TEXT", "Comment", "   ")], "no text, code, number or date"),
    ],
)
def test_empty_sr_is_refused(content: list[Dataset], message: str) -> None:
    with pytest.raises(TextExtractionError, match=message):
        sr_text(make_structured_sr(content))


def test_sr_without_content_sequence_is_refused() -> None:
    ds = make_text_sr("x")
    del ds.ContentSequence
    with pytest.raises(TextExtractionError, match="no ContentSequence"):
        ExtractedText.from_dataset(ds)


def test_too_deep_content_tree_is_refused() -> None:
    item = sr_item("TEXT", "Leaf", "deep")
    for _ in range(MAX_DEPTH + 1):
        item = sr_item("CONTAINER", "Level", children=[item])
    with pytest.raises(TextExtractionError, match="nested deeper"):
        sr_text(make_structured_sr([item]))


def test_items_without_value_type_are_malformed_and_give_no_text() -> None:
    item = sr_item("TEXT", "Comment", "cT2 N0")
    del item.ValueType
    with pytest.raises(TextExtractionError, match="no text, code, number or date"):
        ExtractedText.from_dataset(make_structured_sr([item]))


def test_document_without_patient_id_cannot_be_joined() -> None:
    ds = make_text_sr("cT1", patient_id="")
    with pytest.raises(TextExtractionError, match="no PatientID"):
        ExtractedText.from_dataset(ds)


def test_garbage_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "junk.dcm"
    path.write_bytes(b"\x00" * 10)
    with pytest.raises(TextExtractionError, match="unreadable DICOM file"):
        ExtractedText.from_file(path)


def test_ct_is_not_a_text_document() -> None:
    ct = make_ct_series(n_slices=1, rows=16, cols=16).datasets[0]
    with pytest.raises(TextExtractionError, match="holds no text"):
        ExtractedText.from_dataset(ct)


# -- PDF ---------------------------------------------------------------------------------------


def test_pdf_text_layer_lines_in_order(tmp_path: Path) -> None:
    ds = make_encapsulated_pdf("Referral\nLeft breast, pT1c pN0\nPSA n/a", "P2", "1.2.9")
    doc = ExtractedText.from_file(write_dataset(ds, tmp_path / "pdf.dcm"))
    assert doc.kind == "PDF" and doc.patient_id == "P2" and doc.study_uid == "1.2.9"
    assert doc.text.splitlines() == ["Referral", "Left breast, pT1c pN0", "PSA n/a"]


def test_pdf_without_text_layer_is_refused() -> None:
    with pytest.raises(TextExtractionError, match="no text layer"):
        pdf_text(minimal_pdf(""))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"hello, not a pdf", "not a PDF"),
        (b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog", "unreadable PDF"),
    ],
)
def test_damaged_pdf_is_refused(data: bytes, message: str) -> None:
    with pytest.raises(TextExtractionError, match=message):
        pdf_text(data)


def test_non_pdf_encapsulated_document_is_refused() -> None:
    ds = make_encapsulated_pdf("x")
    ds.MIMETypeOfEncapsulatedDocument = "text/xml"
    with pytest.raises(TextExtractionError, match="not application/pdf"):
        ExtractedText.from_dataset(ds)


def test_rtnode_own_sr_is_not_clinical_input() -> None:
    ds = make_text_sr("Strategy: whole breast")
    ds.Manufacturer = "rtnode"
    with pytest.raises(TextExtractionError, match="rtnode's own output"):
        ExtractedText.from_dataset(ds)


def test_time_datetime_person_and_uid_items() -> None:
    items = [sr_item("TEXT", "Note", "x") for _ in range(4)]
    for item, (vt, kw, value) in zip(
        items,
        [
            ("TIME", "Time", "143000"),
            ("DATETIME", "DateTime", "20240301101500"),
            ("PNAME", "PersonName", "Doe^Jane"),
            ("UIDREF", "UID", "1.2.3.4"),
        ],
        strict=True,
    ):
        del item.TextValue
        item.ValueType = vt
        setattr(item, kw, value)
    assert sr_text(make_structured_sr(items)).splitlines()[1:] == [
        "Note: 14:30:00",
        "Note: 2024-03-01 10:15:00",
        "Note: Doe Jane",
        "Note: 1.2.3.4",
    ]
