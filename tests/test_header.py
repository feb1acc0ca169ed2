"""The fast tag scan agrees with pydicom, or declines."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian

from dicom_node.header import read_index_tags
from dicom_node.intake import INDEX_TAGS, _plain
from tests.factories import (
    make_ct_series,
    make_encapsulated_pdf,
    make_rtdose,
    make_rtplan,
    make_rtstruct,
    make_text_sr,
)


def _objects() -> list[Dataset]:
    ct = make_ct_series(n_slices=2, rows=16, cols=16)
    return [
        ct.datasets[0],
        make_rtstruct(ct),
        make_rtplan(ct),
        make_rtdose(ct, bits_allocated=16),
        make_text_sr("cT1 N0", ct.patient_id, ct.study_uid),
        make_encapsulated_pdf(),
    ]


def _pydicom_view(path: Path) -> dict[str, str]:
    ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(INDEX_TAGS))
    return {k: _plain(ds.get(k)) for k in INDEX_TAGS if ds.get(k) is not None}


@pytest.mark.parametrize("index", range(6))
@pytest.mark.parametrize("syntax", [None, ImplicitVRLittleEndian])
def test_fast_scan_equals_pydicom(tmp_path: Path, index: int, syntax: str | None) -> None:
    ds = _objects()[index]
    path = tmp_path / "x.dcm"
    if syntax is not None:
        ds.file_meta.TransferSyntaxUID = syntax
    ds.save_as(path, enforce_file_format=True, implicit_vr=syntax is not None)
    fast = read_index_tags(path, INDEX_TAGS)
    if fast is not None:  # None is allowed: the caller then uses pydicom
        assert fast == _pydicom_view(path)


def test_ct_takes_the_fast_path(tmp_path: Path) -> None:
    ds = make_ct_series(n_slices=1, rows=16, cols=16).datasets[0]
    ds.save_as(tmp_path / "ct.dcm", enforce_file_format=True)
    assert read_index_tags(tmp_path / "ct.dcm", INDEX_TAGS) is not None


@pytest.mark.parametrize("syntax", [ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian])
def test_other_syntaxes_decline(tmp_path: Path, syntax: str) -> None:
    ds = make_ct_series(n_slices=1, rows=16, cols=16).datasets[0]
    ds.file_meta.TransferSyntaxUID = syntax
    path = tmp_path / "x.dcm"
    ds.save_as(path, enforce_file_format=True, little_endian=syntax != ExplicitVRBigEndian)
    assert read_index_tags(path, INDEX_TAGS) is None


def test_non_latin_charset_declines(tmp_path: Path) -> None:
    ds = make_ct_series(n_slices=1, rows=16, cols=16).datasets[0]
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.save_as(tmp_path / "x.dcm", enforce_file_format=True)
    assert read_index_tags(tmp_path / "x.dcm", INDEX_TAGS) is None


@pytest.mark.parametrize(
    "content", [b"", b"not dicom at all" * 20, b"\0" * 128 + b"DICM" + b"\xff" * 40]
)
def test_garbage_declines(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "g.dcm").write_bytes(content)
    assert read_index_tags(tmp_path / "g.dcm", INDEX_TAGS) is None


def test_truncated_header_declines(tmp_path: Path) -> None:
    ds = make_ct_series(n_slices=1, rows=16, cols=16).datasets[0]
    path = tmp_path / "x.dcm"
    ds.save_as(path, enforce_file_format=True)
    path.write_bytes(path.read_bytes()[:400])
    assert read_index_tags(path, INDEX_TAGS) is None
