"""Breast phantoms: scenarios and the rule CTV (side, skin, nodes, chest wall)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from scipy import ndimage

from engines.segmentation.context import BreastContext
from engines.segmentation.training.breast import (
    BREAST_SKIN_MM,
    CHESTWALL_SKIN_MM,
    NODES,
    PART_BITS,
    PRIMARY,
    BreastCase,
    Scenario,
    ctv_labels,
    part_index,
    render_case_slice,
)
from engines.segmentation.training.phantom import BREAST_L, BREAST_R

SEED = 3_100_001  # neither training (0..N-1) nor held-out evaluation (3 000 000..)
XS = np.arange(-230.0, 230.0, 1.0, dtype=np.float32)
YS = np.arange(-230.0, 180.0, 1.0, dtype=np.float32)


def case_with(**facts: object) -> BreastCase:
    base = BreastCase.sample(SEED)
    scenario = Scenario(**{"laterality": "left", "surgery": "BCS", "nodal_status": "N0", **facts})  # type: ignore[arg-type]
    return replace(base, scenario=scenario)


def render(case: BreastCase, z: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    hu, label, bits = render_case_slice(case, XS, YS, z, with_ctv=True)
    assert bits is not None
    return hu, label, bits


def breast_z(case: BreastCase) -> float:
    b = case.anatomy.breasts[0]
    return b.z - b.sag * b.rz


def columns_x(mask: np.ndarray) -> np.ndarray:
    return XS[np.nonzero(mask)[1]]


def test_scenario_rules() -> None:
    assert Scenario("left", "BCS", "N0").context == BreastContext("left", "breast", False, None)
    assert Scenario("right", "mastectomy", "N1").context == BreastContext(
        "right", "chestwall", True, "ESTRO"
    )
    assert Scenario("left", "BCS", "N2+").context.scl_guideline == "RTOG"
    assert not Scenario("left", "BCS", "N0").side_visible
    assert Scenario("left", "BCS", "N0", clips=True).side_visible
    assert Scenario("left", "mastectomy", "N0").side_visible


def test_cases_are_reproducible_and_always_have_breasts() -> None:
    a, b = BreastCase.sample(SEED), BreastCase.sample(SEED)
    assert a.scenario == b.scenario and a.bed == b.bed
    assert all(len(BreastCase.sample(s).anatomy.breasts) == 2 for s in range(5))


@pytest.mark.parametrize("side", ["left", "right"])
def test_ctv_is_on_the_treated_side_only(side: str) -> None:
    case = case_with(laterality=side, nodal_status="N1")
    midline = case.anatomy.shift_x
    for z in (breast_z(case), 0.62 * case.anatomy.lung_height, case.anatomy.apex_z + 20):
        _, _, bits = render(case, z)
        ctv = ctv_labels(bits, case.scenario.context) > 0
        assert ctv.any(), z
        x = columns_x(ctv)
        assert (x > midline).all() if side == "left" else (x < midline).all()


def test_whole_breast_spares_skin_and_stops_at_the_muscle() -> None:
    case = case_with()
    _, label, bits = render(case, breast_z(case))
    primary = ctv_labels(bits, case.scenario.context) == PRIMARY
    assert primary.any()
    skin = ndimage.distance_transform_edt(label != 0)
    assert skin[primary].min() >= BREAST_SKIN_MM
    assert (label[primary] == BREAST_L).all()  # breast tissue only: no muscle, no ribs
    breast_tissue = (label == BREAST_L) & (skin >= BREAST_SKIN_MM + 1)
    assert primary[breast_tissue].all()


def test_nodes_only_with_regional_nodes_and_rtog_reaches_higher() -> None:
    case = case_with(nodal_status="N2+")
    a = case.anatomy
    n0 = BreastContext("left", "breast", False)
    estro = BreastContext("left", "breast", True, "ESTRO")
    rtog = BreastContext("left", "breast", True, "RTOG")
    for z in (0.62 * a.lung_height, 0.8 * a.lung_height, a.apex_z + 20):
        _, _, bits = render(case, z)
        assert not (ctv_labels(bits, n0) == NODES).any()
        nodes = ctv_labels(bits, estro) == NODES
        assert nodes.any(), z
        assert (ctv_labels(bits, rtog) == NODES)[nodes].all()  # RTOG contains ESTRO
    _, _, bits = render(case, a.apex_z + 40)
    assert not (ctv_labels(bits, estro) == NODES).any()
    assert (ctv_labels(bits, rtog) == NODES).any()


def test_primary_and_nodes_never_overlap() -> None:
    case = case_with(nodal_status="N1")
    for z in np.linspace(0.0, case.anatomy.apex_z + 40, 9):
        _, _, bits = render(case, float(z))
        for suffix in ("L", "R"):
            wall = (bits >> part_index("chestwall", suffix)) & 1
            breast = (bits >> part_index("breast", suffix)) & 1
            assert not (breast & ~wall & 1).any()  # the breast CTV lies inside the chest wall's
            for guideline in ("ESTRO", "RTOG"):
                nodes = (bits >> part_index("nodes", suffix, guideline)) & 1
                assert not (nodes & wall).any()


def test_mastectomy_leaves_a_thin_chest_wall_and_no_breast() -> None:
    bcs, mastectomy = case_with(), case_with(surgery="mastectomy")
    z = breast_z(bcs)
    _, label_bcs, _ = render(bcs, z)
    _, label, bits = render(mastectomy, z)
    assert (label_bcs == BREAST_L).any() and not (label == BREAST_L).any()
    assert (label == BREAST_R).any()  # the other breast is still there
    assert not ((bits >> PART_BITS.index("breast_L")) & 1).any()
    wall = ctv_labels(bits, mastectomy.scenario.context) == PRIMARY
    assert wall.any() and (columns_x(wall) > mastectomy.anatomy.shift_x).all()
    skin = ndimage.distance_transform_edt(label != 0)
    assert skin[wall].min() >= CHESTWALL_SKIN_MM
    centre = int(np.argmin(np.abs(XS - (mastectomy.anatomy.shift_x + bcs.anatomy.breasts[0].x))))
    thickness_mm = int(wall[:, centre].sum())  # along y under the former breast, 1 mm rows
    assert 4 <= thickness_mm <= 30, thickness_mm
    # The chest wall of the mastectomy side is thinner than the BCS breast there.
    assert wall.sum() < (label_bcs == BREAST_L).sum()


def test_seroma_and_clips_are_in_the_treated_breast() -> None:
    case = case_with(seroma=True, clips=True)
    case = replace(case, clips=((case.bed[0], case.bed[1], case.bed[2]),))
    hu, label, _ = render(case, case.bed[2])
    clip = hu > 2000
    assert clip.any() and (label[clip] == BREAST_L).all()
    seroma = (hu > 0) & (hu < 30) & (label == BREAST_L)
    assert seroma.sum() > 50
