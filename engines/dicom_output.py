"""What every DICOM object the node writes takes from its source: the file meta and the
patient and study attributes (shared by the RTSTRUCT writer and the SR reports)."""

from __future__ import annotations

from collections.abc import Iterable

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian

IMPLEMENTATION_VERSION_NAME = "RTNODE"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
COMPREHENSIVE_SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.33"

# Patient and study attributes of type 2 in the RT Structure Set and SR IODs: copied from
# the source, empty when it lacks them.
PATIENT_STUDY_TYPE2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
)


def new_file_meta(sop_class_uid: str, sop_instance_uid: str) -> FileMetaDataset:
    """File meta of a new explicit VR little endian instance written by the node."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    return meta


def copy_patient_study(ds: Dataset, source: Dataset, optional: Iterable[str] = ()) -> None:
    """Study Instance UID and the type 2 patient/study attributes (empty when absent), plus
    the ``optional`` keywords the source has with a value."""
    ds.StudyInstanceUID = source.StudyInstanceUID
    for keyword in PATIENT_STUDY_TYPE2:
        setattr(ds, keyword, source[keyword].value if keyword in source else "")
    for keyword in optional:
        if keyword in source and source[keyword].value not in (None, ""):
            setattr(ds, keyword, source[keyword].value)
