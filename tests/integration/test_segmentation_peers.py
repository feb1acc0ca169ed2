"""The shipped segmentation model's RTSTRUCTs, checked by real peers.

A 512 x 512 synthetic thorax CT (head- and feet-first) goes through the shipped CT
pipeline, ``classical_body_lungs`` -> ``segment_onnx`` -> ``rtstruct_writer``: the
RTSTRUCT holds the classical External and the model's organs (one External only),
dciodvfy reports no error, and plastimatch rasterises every structure over 10 cm3 back
to the engine's mask with Dice >= 0.98. Then the same pipeline as a routing rule of a
running node: storescu pushes the CT, storescp (the TPS) receives the RTSTRUCT.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset

from engines.base import EngineContext
from engines.classical.body_lungs import BodyLungsEngine
from engines.rtstruct.engine import RTStructWriterEngine
from engines.segmentation.engine import SegmentationEngine
from engines.segmentation.training.dicom import ct_datasets, write_ct
from engines.segmentation.training.phantom import Acquisition, Anatomy, scan
from tests.factories import dice
from tests.integration.conftest import RtNode, StoreSCP, push, requires_dcmtk, wait_for
from tests.integration.test_rtstruct_peers import (
    MIN_DICE,
    MIN_VOLUME_CM3,
    dciodvfy_errors,
    metaimage_on_ct,
    needs_dciodvfy,
    needs_plastimatch,
    plastimatch_masks,
)

pytestmark = pytest.mark.integration

SEED = 2_000_000  # held out from training; has breasts
MODEL_ROIS = {"Lung_L", "Lung_R", "Heart", "SpinalCord", "Esophagus", "Breast_L", "Breast_R"}
PIPELINE = ["classical_body_lungs", "segment_onnx", "rtstruct_writer"]
N_SLICES = 40


def write_phantom(directory: Path, position: str) -> list[Path]:
    """A 512 x 512 x 40 (3 mm) thorax phantom CT through the heart and breasts."""
    anatomy = Anatomy.sample(SEED)
    xs = ((np.arange(512) - 255.5) * (500.0 / 512)).astype(np.float32)
    zs = (0.05 * anatomy.apex_z + 3.0 * np.arange(N_SLICES)).astype(np.float32)
    if position == "FFS":
        xs, zs = xs[::-1].copy(), zs[::-1].copy()
    acq = Acquisition(
        xs=xs,
        ys=((np.arange(512) - 255.5) * (500.0 / 512)).astype(np.float32),
        zs=zs,
        noise_seed=SEED,
    )
    hu, _ = scan(anatomy, acq)
    return write_ct(ct_datasets(hu, acq), directory)


@needs_dciodvfy
@needs_plastimatch
@pytest.mark.parametrize("position", ["HFS", "FFS"])
def test_model_rtstruct_passes_dciodvfy_and_plastimatch(position: str, tmp_path: Path) -> None:
    ct_dir = tmp_path / "ct"
    ctx = EngineContext(
        job_id=1, input_files=write_phantom(ct_dir, position), output_dir=tmp_path / "out"
    )
    BodyLungsEngine().run(ctx)
    classical_external = ctx.structures[0]
    SegmentationEngine().run(ctx)
    RTStructWriterEngine().run(ctx)
    (rtstruct,) = ctx.outputs

    names = [s.name for s in ctx.structures]
    assert names.count("External") == 1 and ctx.structures[0] is classical_external
    assert set(names) == {"External", *MODEL_ROIS}
    assert dciodvfy_errors(rtstruct) == []
    peer_masks = plastimatch_masks(rtstruct, ct_dir, tmp_path / "plastimatch")
    assert set(peer_masks) == set(names)
    for structure in ctx.structures:
        volume_cm3 = structure.voxel_count * ctx.ct.voxel_volume_cm3
        if volume_cm3 <= MIN_VOLUME_CM3:
            continue
        score = dice(metaimage_on_ct(peer_masks[structure.name], ctx.ct), structure.mask)
        print(f"{position} {structure.name}: {volume_cm3:.0f} cm3, Dice {score:.4f}")
        assert score >= MIN_DICE, f"{structure.name} Dice {score:.4f}"


def rtstruct_for(tps: StoreSCP, series_uid: str) -> Callable[[], Dataset | None]:
    def arrived() -> Dataset | None:
        for rs in tps.rtstructs():
            for frame in rs.get("ReferencedFrameOfReferenceSequence", []):
                for study in frame.get("RTReferencedStudySequence", []):
                    if any(
                        str(s.SeriesInstanceUID) == series_uid
                        for s in study.get("RTReferencedSeriesSequence", [])
                    ):
                        return rs
        return None

    return arrived


@requires_dcmtk
def test_rule_routed_ct_gets_classical_external_and_model_organs(
    make_node: Callable[..., RtNode], tps: StoreSCP, tmp_path: Path
) -> None:
    rule = {
        "name": "ct-thorax-model",
        "match": {"Modality": "^CT$"},
        "pipeline": PIPELINE,
        "destinations": ["tps"],
    }
    node = make_node(tps.port, rules=[rule], overrides={"workers": {"job_timeout_s": 300}})
    ct_dir = tmp_path / "ct"
    files = write_phantom(ct_dir, "HFS")
    series_uid = str(ct_datasets_series_uid(files[0]))

    done = push(node.port, ct_dir)
    assert done.returncode == 0, done.stderr[-2000:]
    released = time.monotonic()
    rs = wait_for(
        rtstruct_for(tps, series_uid), 300, "the model's RTSTRUCT at the TPS", interval_s=0.2
    )
    seconds = time.monotonic() - released
    print(f"release -> RTSTRUCT at the TPS: {seconds:.1f} s (quiet window 1 s)")

    rois = [str(r.ROIName) for r in rs.StructureSetROISequence]
    assert rois.count("External") == 1
    assert set(rois) == {"External", *MODEL_ROIS}
    finished = node.audit_rows("job_finished")
    assert finished, "no job_finished audit row"


def ct_datasets_series_uid(path: Path) -> str:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID)
