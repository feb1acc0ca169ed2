"""``segment_ctv`` with the shipped context-aware model on one small breast phantom.

Without clinical text, or for another site, nothing is added and the notes say why. With
a breast strategy the CTV follows the text: changing only the context on the same CT
(the counterfactual test) moves the contour to the other side, adds the nodal regions
superiorly, or widens it to the chest wall, as the rules say.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engines.base import EngineContext, Structure
from engines.registry import BUILTIN_ENGINES, create_engine
from engines.segmentation.card import OutputLabel, Postprocess
from engines.segmentation.context import BreastContext, breast_context
from engines.segmentation.ctv_engine import DEFAULT_CTV_CARD, ContextCTVEngine, context_labels
from engines.segmentation.training.breast import (
    BREAST_SKIN_MM,
    CHESTWALL_SKIN_MM,
    NODES_SKIN_MM,
    BreastCase,
    Scenario,
    ctv_labels,
    scan_case,
)
from engines.segmentation.training.ctv_data import card_template
from engines.segmentation.training.dicom import ct_datasets, write_ct
from tests.factories import breast_ct_acquisition, dice

SEED = 3_100_002  # not a training (0..N-1) nor an evaluation seed (3 000 000..)


@pytest.fixture(scope="module")
def phantom(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[list[Path], BreastCase, np.ndarray, np.ndarray, Path]:
    base = BreastCase.sample(SEED)
    case = replace(base, scenario=Scenario("left", "BCS", "N0"))
    acq = breast_ct_acquisition(case.anatomy, SEED)
    hu, truth, bits = scan_case(case, acq, with_ctv=True)
    assert bits is not None
    directory = tmp_path_factory.mktemp("ctv_phantom")
    files = write_ct(ct_datasets(hu, acq), directory)
    return files, case, truth, bits, directory


@pytest.fixture(scope="module")
def engine() -> ContextCTVEngine:
    return ContextCTVEngine()


def clinical(
    laterality: str = "left", target: str = "breast", nodes: bool = False
) -> dict[str, Any]:
    return {
        "site": "breast",
        "laterality": laterality,
        "strategy": {
            "breast_or_chestwall": target,
            "regional_nodes": nodes,
            "scl_guideline": "ESTRO" if nodes else None,
        },
    }


def run(
    engine: ContextCTVEngine,
    phantom: tuple[list[Path], BreastCase, np.ndarray, np.ndarray, Path],
    facts: dict[str, Any] | None,
    with_external: bool = True,
) -> tuple[dict[str, Structure], EngineContext]:
    files, _, truth, _, directory = phantom
    ctx = EngineContext(
        job_id=1, input_files=files, output_dir=directory, params={"segmentation_threads": 2}
    )
    ctx.clinical = facts
    if with_external:
        ctx.structures = [Structure("External", truth > 0, (0, 255, 0), "EXTERNAL")]
    engine.run(ctx)
    return {s.name: s for s in ctx.structures if s.interpreted_type == "CTV"}, ctx


def centroid(mask: np.ndarray) -> np.ndarray:
    return np.array([c.mean() for c in np.nonzero(mask)])


def x_of_column(column: float) -> float:
    """Patient x (mm) of a column of the phantom's grid: 256 columns of 1.8 mm centred on
    x = 0, head first."""
    return (column - 127.5) * 1.8


def test_registered() -> None:
    assert BUILTIN_ENGINES["segment_ctv"].endswith(":ContextCTVEngine")
    assert DEFAULT_CTV_CARD.name == "breast_ctv.yaml" and DEFAULT_CTV_CARD.exists()
    assert isinstance(create_engine("segment_ctv"), ContextCTVEngine)


@pytest.mark.parametrize(
    ("facts", "why"),
    [
        (None, "no clinical text"),
        (
            {"site": "prostate", "laterality": None, "strategy": {"target": "prostate"}},
            "not breast",
        ),
        ({**clinical(), "laterality": "bilateral"}, "laterality"),
    ],
)
def test_nothing_without_a_breast_strategy(
    engine: ContextCTVEngine, phantom: Any, facts: dict[str, Any] | None, why: str
) -> None:
    found, ctx = run(engine, phantom, facts)
    assert found == {}
    assert any(n.startswith("segment_ctv: no CTV added") and why in n for n in ctx.notes), ctx.notes


def test_breast_ctv_follows_the_rules(engine: ContextCTVEngine, phantom: Any) -> None:
    _, case, _, bits, _ = phantom
    found, ctx = run(engine, phantom, clinical(), with_external=False)
    assert set(found) == {"CTVp_Breast_L"}
    ctv = found["CTVp_Breast_L"]
    assert ctv.interpreted_type == "CTV" and ctv.color_rgb == (255, 128, 0)
    assert "review required" in ctv.description
    context = breast_context(clinical())
    assert context is not None
    assert dice(ctv.mask, ctv_labels(bits, context) > 0) >= 0.75
    columns = np.nonzero(ctv.mask)[2]
    assert x_of_column(columns.min()) > case.anatomy.shift_x - 2.0  # left only
    assert any("context left whole breast" in n for n in ctx.notes)


def test_counterfactual_side_flips_the_contour(engine: ContextCTVEngine, phantom: Any) -> None:
    _, case, *_ = phantom
    left, _ = run(engine, phantom, clinical("left"))
    right, _ = run(engine, phantom, clinical("right"))
    assert set(right) == {"CTVp_Breast_R"}
    midline = case.anatomy.shift_x
    assert x_of_column(centroid(left["CTVp_Breast_L"].mask)[2]) > midline + 40
    assert x_of_column(centroid(right["CTVp_Breast_R"].mask)[2]) < midline - 40


def test_counterfactual_nodes_add_volume_superiorly(engine: ContextCTVEngine, phantom: Any) -> None:
    n0, _ = run(engine, phantom, clinical(nodes=False))
    n1, _ = run(engine, phantom, clinical(nodes=True))
    assert set(n1) == {"CTVp_Breast_L", "CTVn_Breast_L"}
    breast, nodes = n1["CTVp_Breast_L"].mask, n1["CTVn_Breast_L"].mask
    before = n0["CTVp_Breast_L"].mask
    added = (breast | nodes) & ~before
    assert added.sum() * 1.8 * 1.8 * 5.0 / 1000.0 > 1.0  # cm3 (weak: docs/context_ctv.md)
    # slices run head first: a larger slice index is superior
    assert centroid(nodes)[0] > centroid(breast)[0]
    assert centroid(added)[0] > centroid(before)[0]


def test_counterfactual_mastectomy_widens_to_the_chest_wall(
    engine: ContextCTVEngine, phantom: Any
) -> None:
    _, _, _, bits, _ = phantom
    breast, _ = run(engine, phantom, clinical(target="breast"))
    wall, _ = run(engine, phantom, clinical(target="chestwall"))
    assert set(wall) == {"CTVp_Chestwall_L"}
    to_wall, as_breast = breast_context(clinical(target="chestwall")), breast_context(clinical())
    assert to_wall is not None and as_breast is not None
    # the chest-wall tissue the breast CTV leaves out (pectoral muscle, tissue near the skin)
    gained = (ctv_labels(bits, to_wall) == 1) & (ctv_labels(bits, as_breast) != 1)
    covered_after = (wall["CTVp_Chestwall_L"].mask & gained).sum() / gained.sum()
    covered_before = (breast["CTVp_Breast_L"].mask & gained).sum() / gained.sum()
    assert covered_after > 0.5 > covered_before
    assert wall["CTVp_Chestwall_L"].mask.sum() > breast["CTVp_Breast_L"].mask.sum()


def test_context_labels_take_the_skin_margin_of_the_target() -> None:
    labels = card_template(multimodal=True)["outputs"]["labels"]
    parsed = [OutputLabel.model_validate(label) for label in labels]
    breast = BreastContext("left", "breast", regional_nodes=True, scl_guideline="ESTRO")
    chestwall = BreastContext("right", "chestwall", regional_nodes=False)
    margins = {
        label.name: label.postprocess.skin_margin_mm for label in context_labels(parsed, breast)
    }
    assert margins == {"CTVp": BREAST_SKIN_MM, "CTVn": NODES_SKIN_MM}
    only = context_labels(parsed, chestwall)  # no regional nodes: no nodal label
    assert [(label.name, label.postprocess.skin_margin_mm) for label in only] == [
        ("CTVp", CHESTWALL_SKIN_MM)
    ]
    with pytest.raises(ValueError, match="unknown context fields"):
        Postprocess(skin_margin_mm_by_context={"target_lung": 5.0})
