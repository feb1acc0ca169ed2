"""Synthetic breast-cancer phantoms: a thorax, a clinical scenario and rule-based CTVs.

Each case is a thorax of :mod:`engines.segmentation.training.phantom` with both breasts
(same geometry, HU and acquisition model) and a scenario: the treated side (left or
right), the surgery (breast-conserving surgery, BCS: both breasts present, on the
treated side a seroma in the tumour bed in half the cases and surgical clips around it
in half; mastectomy: no breast on the treated side and only a thin layer of soft tissue
over the muscle there) and the nodal status (N0, N1, N2+). Both sides carry the
anatomical landmarks the nodal regions follow: an axillary-subclavian vein from the
lateral chest wall over the pectoral muscle to the base of the neck, and the internal
mammary vessels beside the sternum.

The clinical target volume follows deterministic rules from the scenario's *context*
(:class:`engines.segmentation.context.BreastContext`: side, breast or chest wall,
regional nodes and the supraclavicular guideline), evaluated on the rendered slice:

* whole breast (``target="breast"``): breast tissue of the treated side at least
  ``BREAST_SKIN_MM`` (5 mm) from the skin; the breast ends at the pectoral muscle;
* chest wall (``target="chestwall"``): the soft tissue between the rib cage and the skin
  (pectoral muscle, subcutaneous tissue, any breast tissue) over the treated breast's
  footprint (its extent across and along the body, 15% larger), anterior half of the
  body, at least ``CHESTWALL_SKIN_MM`` (3 mm) from the skin, ribs excluded;
* regional nodes (N1 and above): axillary levels I-III and the supraclavicular region,
  a 15 mm tube around the vein through level I (lateral chest wall at the upper breast),
  level II (62% of the lung height, over the pectoral muscle), level III (80%,
  infraclavicular) to the supraclavicular fossa (20 mm above the lung apex, lateral to
  the trachea); RTOG (N2+) extends the supraclavicular region 20 mm further up and
  laterally; plus the internal mammary region, 9 mm around the internal mammary vessels
  inside the anterior rib cage from the breast's centre up to 85% of the lung height.
  Nodal regions hold soft tissue only (no lung, bone, heart or airway), keep 5 mm from
  the skin and are clipped to the outside of that side's chest-wall region, so the
  primary and nodal parts never overlap, whatever the surgery.

Only the treated side is ever part of the CTV. Distances to the skin are in-plane
(per axial slice) Euclidean distances, so the rules are evaluated on grids of about 1 mm
(the scan itself, or model voxels split 4 x 4 in-plane).

The rule CTV is defined for any context, not only the scenario's own: this is what the
counterfactual test asks (same CT, another text). The parts of every context are
rendered at once as bits (``PART_BITS``) and combined by :func:`ctv_labels`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from itertools import pairwise
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from engines.segmentation.context import BreastContext, Guideline, Laterality, Target
from engines.segmentation.training.phantom import (
    BODY,
    BREAST_L,
    BREAST_R,
    Acquisition,
    Anatomy,
    BoolArray,
    Breast,
    FloatArray,
    LabelArray,
    render_slice,
    sample_breast_pair,
    superellipse,
)

Surgery = Literal["BCS", "mastectomy"]
NodalStatus = Literal["N0", "N1", "N2+"]
Point = tuple[float, float, float]

BREAST_SKIN_MM = 5.0
CHESTWALL_SKIN_MM = 3.0
NODES_SKIN_MM = 5.0
FOOTPRINT_SCALE = 1.15
AXILLA_RADIUS_MM = 15.0
SCL_RADIUS_MM = 13.0
IMN_RADIUS_MM = 9.0
VEIN_RADIUS_MM = 4.5
IM_VESSEL_RADIUS_MM = 2.0
_BONE_HU = 140.0

# Bits of the rendered CTV parts (one uint8 per voxel).
PART_BITS: tuple[str, ...] = (
    "breast_L",
    "breast_R",
    "chestwall_L",
    "chestwall_R",
    "nodes_L_ESTRO",
    "nodes_L_RTOG",
    "nodes_R_ESTRO",
    "nodes_R_RTOG",
)
CTV_CLASSES: tuple[str, ...] = ("background", "primary", "nodes")
PRIMARY, NODES = 1, 2


def part_index(part: str, side: Literal["L", "R"], guideline: Guideline | None = None) -> int:
    """Index in ``PART_BITS`` of ``part`` ("breast", "chestwall", "nodes") on ``side``."""
    if part == "nodes":
        return PART_BITS.index(f"nodes_{side}_{guideline or 'ESTRO'}")
    return PART_BITS.index(f"{part}_{side}")


def context_parts(context: BreastContext) -> tuple[int, int | None]:
    """(primary part index, nodal part index or None) of a context."""
    side: Literal["L", "R"] = "L" if context.laterality == "left" else "R"
    primary = part_index(context.target, side)
    if not context.regional_nodes:
        return primary, None
    return primary, part_index("nodes", side, context.scl_guideline)


def ctv_labels(bits: npt.NDArray[np.uint8], context: BreastContext) -> LabelArray:
    """The rule CTV of ``context`` from rendered part bits: 0 background, 1 primary
    (breast or chest wall), 2 regional nodes."""
    primary, nodes = context_parts(context)
    out = np.where((bits >> primary) & 1, PRIMARY, 0).astype(np.uint8)
    if nodes is not None:
        out[((bits >> nodes) & 1).astype(bool)] = NODES
    return out


# --------------------------------------------------------------------------- scenario


@dataclass(frozen=True)
class Scenario:
    """The clinical facts of one case."""

    laterality: Laterality
    surgery: Surgery
    nodal_status: NodalStatus
    seroma: bool = False
    clips: bool = False

    @property
    def context(self) -> BreastContext:
        """The strategy the rules give (breast after BCS, chest wall after mastectomy;
        regional nodes for N1+, supraclavicular RTOG for N2+ and ESTRO for N1)."""
        nodes = self.nodal_status != "N0"
        target: Target = "breast" if self.surgery == "BCS" else "chestwall"
        guideline: Guideline | None = None
        if nodes:
            guideline = "RTOG" if self.nodal_status == "N2+" else "ESTRO"
        return BreastContext(self.laterality, target, nodes, guideline)

    @property
    def side_visible(self) -> bool:
        """Whether the CT shows the treated side (missing breast, seroma or clips)."""
        return self.surgery == "mastectomy" or self.seroma or self.clips

    @classmethod
    def sample(cls, rng: np.random.Generator) -> Scenario:
        surgery: Surgery = "mastectomy" if rng.random() < 0.35 else "BCS"
        u = rng.random()
        nodal: NodalStatus = "N0" if u < 0.4 else ("N1" if u < 0.75 else "N2+")
        return cls(
            laterality="left" if rng.random() < 0.5 else "right",
            surgery=surgery,
            nodal_status=nodal,
            seroma=surgery == "BCS" and bool(rng.random() < 0.5),
            clips=surgery == "BCS" and bool(rng.random() < 0.5),
        )


@dataclass(frozen=True)
class BreastCase:
    """One phantom: a thorax with both breasts (``anatomy``), the scenario, and where the
    surgery left its marks (tumour bed centre and radius, clip positions, the chest
    wall's soft-tissue thickness after mastectomy)."""

    anatomy: Anatomy
    scenario: Scenario
    bed: Point
    bed_radius: float
    seroma_hu: float
    clips: tuple[Point, ...]
    thin_mm: float

    @classmethod
    def sample(cls, seed: int) -> BreastCase:
        """The case of ``seed`` (same thorax as ``Anatomy.sample(seed)``, breasts forced)."""
        rng = np.random.default_rng([seed, 4242])
        base = Anatomy.sample(seed)
        anatomy = replace(
            base, breasts=sample_breast_pair(rng, base.body_ax, base.lung_height, min_size=0.2)
        )
        scenario = Scenario.sample(rng)
        side = _sign(scenario.laterality)
        breast = anatomy.breasts[0 if side > 0 else 1]
        bed, radius = _tumour_bed(anatomy, breast, rng)
        clips = _clip_positions(bed, radius, rng) if scenario.clips else ()
        return cls(
            anatomy=anatomy,
            scenario=scenario,
            bed=bed,
            bed_radius=radius,
            seroma_hu=float(rng.uniform(5, 25)),
            clips=clips,
            thin_mm=float(rng.uniform(3, 8)),
        )

    def treated_breast(self) -> Breast:
        return self.anatomy.breasts[0 if _sign(self.scenario.laterality) > 0 else 1]

    def rendered_anatomy(self) -> Anatomy:
        """The anatomy as scanned: after mastectomy the treated breast is gone."""
        if self.scenario.surgery == "BCS":
            return self.anatomy
        gone = Breast(x=0.0, z=-1e6, rx=1.0, rz=1.0, depth=1.0, sag=0.0, density=0.5)
        left, right = self.anatomy.breasts
        kept = (gone, right) if self.scenario.laterality == "left" else (left, gone)
        return replace(self.anatomy, breasts=kept)


def _sign(laterality: Laterality) -> float:
    """+1 for left (patient left is +x in LPS), -1 for right."""
    return 1.0 if laterality == "left" else -1.0


def _breast_centre_z(b: Breast) -> float:
    return b.z - b.sag * b.rz


def _chest_wall_y(a: Anatomy, b: Breast, z: float) -> float:
    """y of the muscle surface under the breast's centre (as the phantom computes it)."""
    ax, ay = a.body_axes(z)
    wall_ax, wall_ay = ax - a.fat, ay - a.fat
    rel = min(abs(b.x) / wall_ax, 0.95)
    return a.shift_y - wall_ay * (1.0 - rel**a.body_power) ** (1.0 / a.body_power)


def _tumour_bed(a: Anatomy, b: Breast, rng: np.random.Generator) -> tuple[Point, float]:
    z = _breast_centre_z(b) + rng.uniform(-0.3, 0.3) * b.rz
    thickness = b.depth + a.fat
    radius = min(float(rng.uniform(8, 16)), 0.3 * thickness)
    x = a.shift_x + b.x + rng.uniform(-0.35, 0.35) * b.rx
    y = _chest_wall_y(a, b, z) - rng.uniform(0.4, 0.55) * thickness
    return (float(x), float(y), float(z)), radius


def _clip_positions(bed: Point, radius: float, rng: np.random.Generator) -> tuple[Point, ...]:
    count = int(rng.integers(4, 7))
    d = rng.normal(size=(count, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    return tuple(
        (bed[0] + (radius + 2) * u, bed[1] + (radius + 2) * v, bed[2] + (radius + 2) * w)
        for u, v, w in d
    )


# --------------------------------------------------------------------------- landmarks


def _direction_radius(ax: float, ay: float, power: float, c: float, s: float) -> float:
    """Distance from a superellipse's centre to its edge along the unit direction (c, s)."""
    value = (abs(c) / ax) ** power + (abs(s) / ay) ** power
    return float(value ** (-1.0 / power))


def _wall_point(a: Anatomy, z: float, side: float, angle_deg: float, fraction: float) -> Point:
    """A point in the chest wall soft tissue at height ``z``: ``fraction`` of the way from
    the rib cage to the skin, ``angle_deg`` from lateral toward anterior."""
    angle = math.radians(angle_deg)
    c, s = side * math.cos(angle), -math.sin(angle)
    ax, ay = a.body_axes(z)
    cav_cy, cav_ax, cav_ay, _ = a.cavity(z)
    r_body = _direction_radius(ax, ay, a.body_power, c, s)
    r_cage = _direction_radius(cav_ax + a.rib, cav_ay + a.rib, a.body_power, c, s)
    body = (a.shift_x + r_body * c, a.shift_y + r_body * s)
    cage = (a.shift_x + r_cage * c, cav_cy + r_cage * s)
    x = cage[0] + fraction * (body[0] - cage[0])
    y = cage[1] + fraction * (body[1] - cage[1])
    return (float(x), float(y), float(z))


def _scl_point(a: Anatomy, side: float, above_mm: float, lateral_mm: float) -> Point:
    z = a.apex_z + above_mm
    y = a.spine_y(z) - a.vb_r - 30.0
    return (a.shift_x + side * (a.trachea_r + lateral_mm), float(y), float(z))


def nodal_chain(a: Anatomy, breast: Breast, side: float) -> tuple[Point, ...]:
    """Level I, II, III and supraclavicular points (the vein runs through them)."""
    level1_z = _breast_centre_z(breast) + 0.45 * breast.rz
    return (
        _wall_point(a, level1_z, side, 15.0, 0.5),
        _wall_point(a, 0.62 * a.lung_height, side, 35.0, 0.5),
        _wall_point(a, 0.80 * a.lung_height, side, 55.0, 0.45),
        _scl_point(a, side, 20.0, 30.0),
    )


def rtog_extension(a: Anatomy, side: float) -> Point:
    """The RTOG supraclavicular region's cranio-lateral end."""
    return _scl_point(a, side, 40.0, 50.0)


def _im_vessel(a: Anatomy, z: float, side: float) -> tuple[float, float]:
    cav_cy, _, cav_ay, _ = a.cavity(z)
    return a.shift_x + side * 26.0, cav_cy - cav_ay + 6.0


def _capsule3d(
    xs: FloatArray, ys: FloatArray, z: float, p0: Point, p1: Point, r: float
) -> BoolArray:
    """Pixels of slice ``z`` within ``r`` of the 3-D segment p0-p1."""
    out = np.zeros((ys.size, xs.size), dtype=bool)
    if z < min(p0[2], p1[2]) - r or z > max(p0[2], p1[2]) + r:
        return out
    lo_x, hi_x = min(p0[0], p1[0]) - r, max(p0[0], p1[0]) + r
    lo_y, hi_y = min(p0[1], p1[1]) - r, max(p0[1], p1[1]) + r
    cols = np.flatnonzero((xs >= lo_x) & (xs <= hi_x))
    rows = np.flatnonzero((ys >= lo_y) & (ys <= hi_y))
    if cols.size == 0 or rows.size == 0:
        return out
    px = xs[cols][None, :].astype(np.float64)
    py = ys[rows][:, None].astype(np.float64)
    e = np.subtract(p1, p0)
    length2 = max(float(e @ e), 1e-6)
    t = np.clip(((px - p0[0]) * e[0] + (py - p0[1]) * e[1] + (z - p0[2]) * e[2]) / length2, 0, 1)
    d2 = (px - p0[0] - t * e[0]) ** 2 + (py - p0[1] - t * e[1]) ** 2 + (z - p0[2] - t * e[2]) ** 2
    out[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1] = d2 <= r * r
    return out


def _chain(
    xs: FloatArray, ys: FloatArray, z: float, points: tuple[Point, ...], r: float
) -> BoolArray:
    out = np.zeros((ys.size, xs.size), dtype=bool)
    for p0, p1 in pairwise(points):
        out |= _capsule3d(xs, ys, z, p0, p1, r)
    return out


def _disc(xs: FloatArray, ys: FloatArray, centre: tuple[float, float], r: float) -> BoolArray:
    return superellipse(xs, ys, centre[0], centre[1], r, r)


def _footprint(a: Anatomy, b: Breast, xs: FloatArray, z: float) -> FloatArray:
    """Normalised distance (across x and z) from a breast's centre; <= 1 inside its
    footprint enlarged by ``FOOTPRINT_SCALE``."""
    dx = (xs - (a.shift_x + b.x)) / (FOOTPRINT_SCALE * b.rx)
    dz = (z - _breast_centre_z(b)) / (FOOTPRINT_SCALE * b.rz)
    return np.sqrt(dx * dx + dz * dz).astype(np.float32)


def _spacing(xs: FloatArray, ys: FloatArray) -> tuple[float, float]:
    dx = abs(float(xs[1] - xs[0])) if xs.size > 1 else 1.0
    dy = abs(float(ys[1] - ys[0])) if ys.size > 1 else 1.0
    return dy, dx


# --------------------------------------------------------------------------- rendering


def render_case_slice(
    case: BreastCase, xs: FloatArray, ys: FloatArray, z: float, with_ctv: bool = False
) -> tuple[FloatArray, LabelArray, npt.NDArray[np.uint8] | None]:
    """HU, thorax labels and (``with_ctv``) CTV part bits of one axial slice."""
    a = case.anatomy
    hu, label = render_slice(case.rendered_anatomy(), xs, ys, z)
    if case.scenario.surgery == "mastectomy":
        _thin_chest_wall(case, hu, label, xs, ys, z)
    vessels = _paint_vessels(a, hu, label, xs, ys, z)
    if case.scenario.surgery == "BCS":
        _paint_surgery(case, hu, label, xs, ys, z)
    if not with_ctv:
        return hu, label, None
    return hu, label, _ctv_parts(case, hu, label, vessels, xs, ys, z)


def _thin_chest_wall(
    case: BreastCase, hu: FloatArray, label: LabelArray, xs: FloatArray, ys: FloatArray, z: float
) -> None:
    """After mastectomy: only ``thin_mm`` of soft tissue over the muscle, tapering back to
    the normal fat layer at the edge of the former breast's footprint."""
    a, b = case.anatomy, case.treated_breast()
    weight = np.clip((1.0 - _footprint(a, b, xs, z)) / 0.5, 0.0, 1.0)
    if not weight.any():
        return
    ax, ay = a.body_axes(z)
    inner = superellipse(xs, ys, a.shift_x, a.shift_y, ax - a.fat, ay - a.fat, a.body_power)
    outside: FloatArray = ndimage.distance_transform_edt(~inner, sampling=_spacing(xs, ys))
    allowed = a.fat - weight * max(a.fat - case.thin_mm, 0.0)
    side = ((xs - a.shift_x) * _sign(case.scenario.laterality) > 0)[None, :]
    anterior = (ys < a.shift_y)[:, None]
    cut = (outside > allowed[None, :]) & side & anterior & (label == BODY)
    hu[cut] = -1000.0
    label[cut] = 0


def _paint_vessels(
    a: Anatomy, hu: FloatArray, label: LabelArray, xs: FloatArray, ys: FloatArray, z: float
) -> BoolArray:
    """Axillary-subclavian veins and internal mammary vessels on both sides."""
    vessels = np.zeros(hu.shape, dtype=bool)
    soft = (label == BODY) & (hu < _BONE_HU) & (hu > -500.0)
    for index, side in enumerate((1.0, -1.0)):
        chain = nodal_chain(a, a.breasts[index], side)
        vessels |= _chain(xs, ys, z, chain, VEIN_RADIUS_MM) & soft
        if 0.1 * a.lung_height <= z <= 0.9 * a.lung_height:
            cav_cy, cav_ax, cav_ay, _ = a.cavity(z)
            inside = superellipse(xs, ys, a.shift_x, cav_cy, cav_ax, cav_ay, a.body_power)
            im = _disc(xs, ys, _im_vessel(a, z, side), IM_VESSEL_RADIUS_MM)
            vessels |= im & inside & soft
    hu[vessels] = a.tissues.blood
    return vessels


def _paint_surgery(
    case: BreastCase, hu: FloatArray, label: LabelArray, xs: FloatArray, ys: FloatArray, z: float
) -> None:
    """Seroma in the tumour bed and surgical clips (inside the treated breast)."""
    breast_label = BREAST_L if case.scenario.laterality == "left" else BREAST_R
    in_breast = label == breast_label
    bx, by, bz = case.bed
    if case.scenario.seroma and abs(z - bz) < case.bed_radius:
        r = math.sqrt(case.bed_radius**2 - (z - bz) ** 2)
        seroma = _disc(xs, ys, (bx, by), r) & in_breast
        hu[seroma] = case.seroma_hu
    for cx, cy, cz in case.clips:
        if abs(z - cz) < 1.5:
            r = math.sqrt(1.5**2 - (z - cz) ** 2)
            clip = _disc(xs, ys, (cx, cy), max(r, 0.6)) & (label != 0)
            hu[clip] = 2500.0


def _ctv_parts(
    case: BreastCase,
    hu: FloatArray,
    label: LabelArray,
    vessels: BoolArray,
    xs: FloatArray,
    ys: FloatArray,
    z: float,
) -> npt.NDArray[np.uint8]:
    a = case.anatomy
    body = label != 0
    skin: FloatArray = ndimage.distance_transform_edt(body, sampling=_spacing(xs, ys))
    cav_cy, cav_ax, cav_ay, _ = a.cavity(z)
    cavity = superellipse(xs, ys, a.shift_x, cav_cy, cav_ax, cav_ay, a.body_power)
    cage = superellipse(xs, ys, a.shift_x, cav_cy, cav_ax + a.rib, cav_ay + a.rib, a.body_power)
    ribs = cage & ~cavity if z <= a.apex_z + 15.0 else np.zeros_like(cage)
    soft = np.isin(label, (BODY, BREAST_L, BREAST_R)) & ~ribs
    soft &= ((hu > -300.0) & (hu < _BONE_HU)) | vessels
    bits = np.zeros(hu.shape, dtype=np.uint8)
    sides: tuple[tuple[float, int, Literal["L", "R"]], ...] = (
        (1.0, BREAST_L, "L"),
        (-1.0, BREAST_R, "R"),
    )
    for index, (side, breast_label, suffix) in enumerate(sides):
        on_side = ((xs - a.shift_x) * side > 0)[None, :]
        breast = (label == breast_label) & (skin >= BREAST_SKIN_MM) & on_side
        footprint = (_footprint(a, a.breasts[index], xs, z) <= 1.0)[None, :]
        anterior = (ys < cav_cy)[:, None]
        chestwall = body & ~cage & footprint & anterior & on_side
        chestwall &= (skin >= CHESTWALL_SKIN_MM) & ~(hu >= _BONE_HU)
        chain = nodal_chain(a, a.breasts[index], side)
        estro = _chain(xs, ys, z, chain, AXILLA_RADIUS_MM) & ~cavity
        estro |= _chain(xs, ys, z, chain[-2:], SCL_RADIUS_MM)
        if _breast_centre_z(a.breasts[index]) <= z <= 0.85 * a.lung_height:
            estro |= _disc(xs, ys, _im_vessel(a, z, side), IMN_RADIUS_MM) & cavity
        rtog = estro | _capsule3d(xs, ys, z, chain[-1], rtog_extension(a, side), SCL_RADIUS_MM)
        keep = soft & on_side & (skin >= NODES_SKIN_MM) & ~chestwall
        bits |= breast.astype(np.uint8) << part_index("breast", suffix)
        bits |= chestwall.astype(np.uint8) << part_index("chestwall", suffix)
        bits |= (estro & keep).astype(np.uint8) << part_index("nodes", suffix, "ESTRO")
        bits |= (rtog & keep).astype(np.uint8) << part_index("nodes", suffix, "RTOG")
    return bits


def scan_case(
    case: BreastCase, acq: Acquisition, with_ctv: bool = False
) -> tuple[FloatArray, LabelArray, npt.NDArray[np.uint8] | None]:
    """HU (blur + noise, as :func:`phantom.scan`), exact labels and CTV part bits
    (``with_ctv``), (slice, row, column)."""
    slices = [render_case_slice(case, acq.xs, acq.ys, float(z), with_ctv) for z in acq.zs]
    hu = np.stack([s[0] for s in slices])
    labels = np.stack([s[1] for s in slices])
    bits = np.stack([s[2] for s in slices if s[2] is not None]) if with_ctv else None
    hu = ndimage.gaussian_filter(hu, sigma=acq.blur_px, mode="nearest")
    rng = np.random.default_rng(acq.noise_seed)
    noise = rng.standard_normal(hu.shape, dtype=np.float32)
    noise = ndimage.gaussian_filter(noise, sigma=(0.0, 0.5, 0.5)) * np.float32(2.0)
    hu += noise * np.float32(acq.noise_hu)
    return np.clip(hu, -1024.0, 3071.0), labels, bits


def case_z_range(case: BreastCase, rng: np.random.Generator) -> tuple[float, float]:
    """A breast planning CT's scan range: below the breasts to above the supraclavicular
    region (RTOG extent included)."""
    a = case.anatomy
    lowest = min(_breast_centre_z(b) - b.rz for b in a.breasts)
    return min(lowest, 0.0) - rng.uniform(15.0, 40.0), a.apex_z + rng.uniform(65.0, 90.0)
