"""Re-index spool files the database does not know (a crash between rename and commit)."""

from __future__ import annotations

import logging

import pydicom

from appliance.clock import Clock
from appliance.store import DuplicateInstance, InstanceRecord, Store
from dicom_node.intake import INDEX_TAGS, SERIES_ATTRIBUTES
from dicom_node.spool import Spool

logger = logging.getLogger(__name__)


def reindex_orphans(spool: Spool, store: Store, clock: Clock) -> int:
    """Index every spool file missing from the database; returns how many."""
    known = store.known_paths()
    count = 0
    for path in spool.iter_files():
        if str(path) in known:
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(INDEX_TAGS))
            rec = InstanceRecord(
                sop_instance_uid=str(ds.SOPInstanceUID),
                sop_class_uid=str(ds.SOPClassUID),
                study_uid=str(ds.StudyInstanceUID),
                series_uid=str(ds.SeriesInstanceUID),
                patient_id=str(ds.get("PatientID", "") or ""),
                transfer_syntax=str(ds.file_meta.get("TransferSyntaxUID", "")),
                path=str(path),
                size_bytes=path.stat().st_size,
                calling_ae="",
                attributes={k: str(ds.get(k)) for k in SERIES_ATTRIBUTES if ds.get(k) is not None},
            )
            store.add_instance(rec, clock.now())
            count += 1
        except DuplicateInstance:
            continue
        except Exception:  # a damaged orphan must not stop the node from starting
            logger.exception("could not re-index %s; moving it aside", path)
            path.rename(path.with_suffix(".unreadable"))
    return count
