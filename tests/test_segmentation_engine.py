"""The ``segment_onnx`` engine with the shipped thorax model on a small synthetic CT.

A held-out phantom (a seed no training phantom uses) is written as a 320 x 320 x 30 DICOM
series and segmented; the organs must overlap the phantom's exact labels plausibly.
With an External already in the context (as the classical engine leaves it), that
External is kept and no second one is added.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engines.base import EngineContext, Structure
from engines.segmentation.engine import DEFAULT_CARD, SegmentationEngine
from engines.segmentation.runtime import RuntimeSettings
from engines.segmentation.training.dicom import ct_datasets, write_ct
from engines.segmentation.training.phantom import LABELS, Acquisition, Anatomy, scan
from tests.factories import dice

SEED = 2_000_008  # held out: training uses seeds 0..N-1, evaluation 1 000 000+
ORGANS = ("Lung_L", "Lung_R", "Heart", "SpinalCord", "Esophagus", "Breast_L", "Breast_R")
MIN_DICE = {
    "External": 0.95,
    "Lung_L": 0.9,
    "Lung_R": 0.9,
    "Heart": 0.85,
    "SpinalCord": 0.6,
    "Esophagus": 0.6,
    "Breast_L": 0.8,
    "Breast_R": 0.8,
}


@pytest.fixture(scope="module")
def phantom_ct(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], np.ndarray]:
    anatomy = Anatomy.sample(SEED)
    xs = ((np.arange(320) - 159.5) * 1.25).astype(np.float32)
    zs = (0.05 * anatomy.apex_z + 5.0 * np.arange(30)).astype(np.float32)
    acq = Acquisition(xs=xs, ys=xs.copy(), zs=zs, noise_hu=15.0, noise_seed=SEED)
    hu, truth = scan(anatomy, acq)
    files = write_ct(ct_datasets(hu, acq), tmp_path_factory.mktemp("phantom_ct"))
    return files, truth


@pytest.fixture(scope="module")
def engine() -> SegmentationEngine:
    return SegmentationEngine()


def context(files: list[Path], out: Path) -> EngineContext:
    return EngineContext(
        job_id=1, input_files=files, output_dir=out, params={"segmentation_threads": 2}
    )


def test_organs_overlap_the_phantom(
    phantom_ct: tuple[list[Path], np.ndarray], engine: SegmentationEngine, tmp_path: Path
) -> None:
    files, truth = phantom_ct
    ctx = context(files, tmp_path)
    engine.run(ctx)
    found = {s.name: s for s in ctx.structures}
    assert set(found) == {"External", *ORGANS}
    scores = {"External": dice(found["External"].mask, truth > 0)}
    for name in ORGANS:
        scores[name] = dice(found[name].mask, truth == LABELS.index(name))
    assert all(scores[n] >= MIN_DICE[n] for n in scores), scores
    assert (
        found["Heart"].interpreted_type == "ORGAN"
        and found["External"].interpreted_type == "EXTERNAL"
    )
    assert "review required" in found["Heart"].description
    runtime, _ = engine.sessions.get(DEFAULT_CARD, RuntimeSettings.from_params(ctx.params))
    assert any(f"on {runtime.providers[0]}" in note for note in ctx.notes), ctx.notes


def test_existing_external_is_kept_not_duplicated(
    phantom_ct: tuple[list[Path], np.ndarray], engine: SegmentationEngine, tmp_path: Path
) -> None:
    files, truth = phantom_ct
    ctx = context(files, tmp_path)
    classical = Structure("External", truth > 0, (0, 255, 0), "EXTERNAL", "classical")
    earlier_lung = Structure("Lung_L", truth == LABELS.index("Lung_L"), (0, 200, 255), "ORGAN")
    ctx.structures = [classical, earlier_lung]
    engine.run(ctx)
    externals = [s for s in ctx.structures if s.interpreted_type == "EXTERNAL"]
    assert externals == [classical]
    assert {s.name for s in ctx.structures} == {"External", *ORGANS}
    assert any("kept the existing External" in n for n in ctx.notes), ctx.notes
    assert any("Lung_L from an earlier step replaced" in n for n in ctx.notes), ctx.notes
    assert len(engine.sessions) == 1  # one session for both jobs


def test_default_card_is_the_shipped_thorax_model() -> None:
    assert DEFAULT_CARD.name == "thorax.yaml" and DEFAULT_CARD.exists()
