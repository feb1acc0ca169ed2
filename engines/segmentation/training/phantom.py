"""Synthetic thorax CT phantoms with exact organ labels, for training and evaluation.

There is no public labelled CT on this machine, so the default model learns from phantoms.
Each phantom is a random anatomy defined analytically in DICOM patient coordinates (LPS,
millimetres: +x patient left, +y posterior, +z superior) and can be rendered on any
axis-aligned grid: a CT acquisition (HU with partial-volume blur and noise) or a model
grid (labels only). Labels are evaluated exactly at voxel centres.

Tissues and typical HU: air -1000, lung -880..-800 (denser posteriorly, with vessels),
fat -120..-80, muscle 35..60, blood 30..50 (120..250 with contrast), liver 45..65,
cancellous bone 150..300, cortical bone 500..900, CSF 0..15, spinal cord 30..45, breast
fibroglandular tissue mixed with fat. Random per phantom: body habitus (size, shape, fat
thickness), breasts (about half the phantoms; size, position, density, ptosis), lung
size, shape and asymmetry, diaphragm domes, heart size, position and orientation,
mediastinal anatomy (trachea, carina, aorta, esophagus), spine, ribs, couch.

Label indices (``LABELS``): 0 background (air, couch), 1 other body tissue, then
Lung_L, Lung_R, Heart, SpinalCord, Esophagus, Breast_L, Breast_R. External is the union
of labels 1..8.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from scipy import ndimage

FloatArray = npt.NDArray[np.float32]
BoolArray = npt.NDArray[np.bool_]
LabelArray = npt.NDArray[np.uint8]

LABELS: tuple[str, ...] = (
    "background",
    "Body",
    "Lung_L",
    "Lung_R",
    "Heart",
    "SpinalCord",
    "Esophagus",
    "Breast_L",
    "Breast_R",
)
BODY, LUNG_L, LUNG_R, HEART, CORD, ESOPHAGUS, BREAST_L, BREAST_R = range(1, 9)


# --------------------------------------------------------------------------- shapes


def _span(coords: FloatArray, centre: float, half: float) -> slice | None:
    """Index range of a monotonic coordinate array within ``centre +- half``."""
    hits = np.flatnonzero(np.abs(coords - centre) <= half)
    return None if hits.size == 0 else slice(int(hits[0]), int(hits[-1]) + 1)


def superellipse(
    xs: FloatArray,
    ys: FloatArray,
    cx: float,
    cy: float,
    ax: float,
    ay: float,
    power: float = 2.0,
) -> BoolArray:
    """Pixels of an axis-aligned (super-)ellipse; ``(len(ys), len(xs))`` booleans."""
    out = np.zeros((ys.size, xs.size), dtype=bool)
    if ax <= 0 or ay <= 0:
        return out
    cols, rows = _span(xs, cx, ax), _span(ys, cy, ay)
    if cols is None or rows is None:
        return out
    dx = np.abs((xs[cols] - cx) / ax) ** power
    dy = np.abs((ys[rows] - cy) / ay) ** power
    out[rows, cols] = (dy[:, None] + dx[None, :]) <= 1.0
    return out


def rotated_ellipse(
    xs: FloatArray, ys: FloatArray, cx: float, cy: float, ax: float, ay: float, angle_rad: float
) -> BoolArray:
    """Pixels of an ellipse whose ``ax`` axis is rotated by ``angle_rad`` from +x."""
    out = np.zeros((ys.size, xs.size), dtype=bool)
    reach = max(ax, ay)
    cols, rows = _span(xs, cx, reach), _span(ys, cy, reach)
    if ax <= 0 or ay <= 0 or cols is None or rows is None:
        return out
    dx = (xs[cols] - cx)[None, :]
    dy = (ys[rows] - cy)[:, None]
    c, s = math.cos(angle_rad), math.sin(angle_rad)
    u, v = dx * c + dy * s, -dx * s + dy * c
    out[rows, cols] = (u / ax) ** 2 + (v / ay) ** 2 <= 1.0
    return out


def _capsule(
    xs: FloatArray, ys: FloatArray, p0: tuple[float, float], p1: tuple[float, float], r: float
) -> BoolArray:
    """Pixels within ``r`` of the segment p0-p1."""
    out = np.zeros((ys.size, xs.size), dtype=bool)
    lo = (min(p0[0], p1[0]) - r, min(p0[1], p1[1]) - r)
    hi = (max(p0[0], p1[0]) + r, max(p0[1], p1[1]) + r)
    cols = _span(xs, (lo[0] + hi[0]) / 2, (hi[0] - lo[0]) / 2)
    rows = _span(ys, (lo[1] + hi[1]) / 2, (hi[1] - lo[1]) / 2)
    if r <= 0 or cols is None or rows is None:
        return out
    px, py = xs[cols][None, :], ys[rows][:, None]
    ex, ey = p1[0] - p0[0], p1[1] - p0[1]
    length2 = max(ex * ex + ey * ey, 1e-6)
    t = np.clip(((px - p0[0]) * ex + (py - p0[1]) * ey) / length2, 0.0, 1.0)
    out[rows, cols] = (px - p0[0] - t * ex) ** 2 + (py - p0[1] - t * ey) ** 2 <= r * r
    return out


@dataclass(frozen=True)
class _Waves:
    """A smooth random field: a sum of 3-D plane waves (amplitude in HU)."""

    directions: npt.NDArray[np.float64]  # (n, 3) unit vectors
    wavenumbers: npt.NDArray[np.float64]  # (n,) radians per mm
    phases: npt.NDArray[np.float64]
    amplitude: float

    @classmethod
    def sample(
        cls, rng: np.random.Generator, n: int, wavelength_mm: tuple[float, float], amplitude: float
    ) -> _Waves:
        d = rng.normal(size=(n, 3))
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        k = 2.0 * math.pi / rng.uniform(*wavelength_mm, size=n)
        return cls(d, k, rng.uniform(0, 2 * math.pi, size=n), amplitude)

    def at(self, xs: FloatArray, ys: FloatArray, z: float) -> FloatArray:
        field_ = np.zeros((ys.size, xs.size), dtype=np.float32)
        for (dx, dy, dz), k, phase in zip(
            self.directions, self.wavenumbers, self.phases, strict=True
        ):
            row = np.cos(k * dy * ys + k * dz * z + phase).astype(np.float32)
            col_c = np.cos(k * dx * xs).astype(np.float32)
            col_s = np.sin(k * dx * xs).astype(np.float32)
            row_s = np.sin(k * dy * ys + k * dz * z + phase).astype(np.float32)
            field_ += row[:, None] * col_c[None, :] - row_s[:, None] * col_s[None, :]
        scaled: FloatArray = field_ * np.float32(self.amplitude / math.sqrt(len(self.phases)))
        return scaled


@dataclass(frozen=True)
class _Sphere:
    x: float
    y: float
    z: float
    r: float


# --------------------------------------------------------------------------- anatomy


@dataclass(frozen=True)
class Tissues:
    """Hounsfield units of one phantom's tissues."""

    fat: float
    muscle: float
    lung: float
    lung_gradient: float
    blood: float
    myocardium: float
    liver: float
    cancellous: float
    cortical: float
    csf: float
    cord: float
    gland: float
    cartilage: float

    @classmethod
    def sample(cls, rng: np.random.Generator) -> Tissues:
        contrast = rng.random() < 0.25
        blood = rng.uniform(120, 250) if contrast else rng.uniform(30, 50)
        return cls(
            fat=rng.uniform(-120, -80),
            muscle=rng.uniform(35, 60),
            lung=rng.uniform(-880, -800),
            lung_gradient=rng.uniform(10, 60),
            blood=blood,
            myocardium=rng.uniform(60, 100) if contrast else blood,
            liver=rng.uniform(45, 65) + (rng.uniform(20, 60) if contrast else 0.0),
            cancellous=rng.uniform(150, 300),
            cortical=rng.uniform(500, 900),
            csf=rng.uniform(0, 15),
            cord=rng.uniform(30, 45),
            gland=rng.uniform(-20, 40),
            cartilage=rng.uniform(80, 160),
        )


@dataclass(frozen=True)
class Breast:
    """A breast: an ellipsoid on the anterior chest wall, kept anterior to the muscle."""

    x: float
    z: float
    rx: float
    rz: float
    depth: float
    sag: float
    density: float


@dataclass(frozen=True)
class Anatomy:
    """Random parameters of one thorax (mm, LPS). ``z = 0`` is the top of the right dome."""

    seed: int
    shift_x: float
    shift_y: float
    body_ax: float
    body_ay: float
    body_power: float
    fat: float
    muscle: float
    rib: float
    back_extra: float
    lung_height: float
    mediastinum: float
    lung_ay_frac: float
    lung_cy: float
    lung_scale_l: float
    lung_scale_r: float
    dome_rise_l: float
    dome_radius: float
    heart: tuple[float, float, float]  # centre x, gap to the anterior cavity wall, z
    heart_axes: tuple[float, float, float]
    heart_angle: float
    heart_fat: float
    heart_wall: float
    trachea_r: float
    carina_t: float
    eso_axes: tuple[float, float]
    eso_x: float
    eso_gap: float
    eso_lumen: float
    eso_end: float
    vb_r: float
    canal_r: float
    cord_axes: tuple[float, float]
    aorta_r: float
    arch_t: float
    vertebra_pitch: float
    rib_pitch: float
    rib_phase: float
    breasts: tuple[Breast, ...]
    couch: bool
    tissues: Tissues
    lung_texture: _Waves = field(repr=False)
    gland_texture: _Waves = field(repr=False)
    vessels: tuple[_Sphere, ...] = field(repr=False)

    @classmethod
    def sample(cls, seed: int) -> Anatomy:
        """A random anatomy; the same seed always gives the same phantom."""
        rng = np.random.default_rng(seed)
        fat = rng.uniform(5, 40)
        body_ax, body_ay = rng.uniform(130, 165) + fat, rng.uniform(88, 112) + fat
        lung_height = rng.uniform(170, 250)
        heart_axes = (rng.uniform(45, 62), rng.uniform(36, 50), rng.uniform(42, 58))
        eso_axes = (rng.uniform(7, 10), rng.uniform(5, 7.5))
        anatomy = cls(
            seed=seed,
            shift_x=rng.uniform(-20, 20),
            shift_y=rng.uniform(-15, 15),
            body_ax=body_ax,
            body_ay=body_ay,
            body_power=rng.uniform(2.2, 3.0),
            fat=fat,
            muscle=rng.uniform(8, 15),
            rib=rng.uniform(8, 12),
            back_extra=rng.uniform(12, 20),
            lung_height=lung_height,
            mediastinum=rng.uniform(30, 60),
            lung_ay_frac=rng.uniform(0.8, 0.95),
            lung_cy=rng.uniform(0, 12),
            lung_scale_l=rng.uniform(0.9, 1.0),
            lung_scale_r=rng.uniform(0.95, 1.0),
            dome_rise_l=rng.uniform(-25, -5),
            dome_radius=rng.uniform(70, 110),
            heart=(rng.uniform(5, 30), rng.uniform(2, 12), rng.uniform(0.12, 0.28) * lung_height),
            heart_axes=heart_axes,
            heart_angle=math.radians(rng.uniform(15, 40)),
            heart_fat=rng.uniform(2.5, 6),
            heart_wall=rng.uniform(6, 11),
            trachea_r=rng.uniform(8, 11),
            carina_t=rng.uniform(0.55, 0.7),
            eso_axes=eso_axes,
            eso_x=rng.uniform(-4, 8),
            eso_gap=rng.uniform(2.5, 5),
            eso_lumen=rng.uniform(2, 3.5) if rng.random() < 0.35 else 0.0,
            eso_end=-rng.uniform(15, 40),
            vb_r=rng.uniform(15, 21),
            canal_r=rng.uniform(7.5, 9.5),
            cord_axes=(rng.uniform(5, 6.5), rng.uniform(4, 5)),
            aorta_r=rng.uniform(11, 15),
            arch_t=rng.uniform(0.68, 0.8),
            vertebra_pitch=rng.uniform(24, 30),
            rib_pitch=rng.uniform(24, 32),
            rib_phase=rng.uniform(0, 1),
            breasts=_sample_breasts(rng, body_ax, lung_height),
            couch=bool(rng.random() < 0.6),
            tissues=Tissues.sample(rng),
            lung_texture=_Waves.sample(rng, 8, (12, 45), rng.uniform(15, 35)),
            gland_texture=_Waves.sample(rng, 10, (8, 30), 1.0),
            vessels=(),
        )
        vessels = _sample_vessels(rng, anatomy)
        return _replace_vessels(anatomy, vessels)

    # -- derived geometry -----------------------------------------------------------

    @property
    def apex_z(self) -> float:
        return self.lung_height

    def t(self, z: float) -> float:
        """Relative height: 0 at the top of the domes, 1 at the lung apex."""
        return z / self.lung_height

    def body_axes(self, z: float) -> tuple[float, float]:
        """Body semi-axes at height z: the chest, narrowing to the neck above the apex."""
        wobble = 1.0 + 0.03 * math.sin(2 * math.pi * self.t(z) + self.seed)
        ax, ay = self.body_ax * wobble, self.body_ay * wobble
        above = z - (self.apex_z + 10.0)
        if above > 0:
            k = min(above / 80.0, 0.6)
            ax = ax + k * (75.0 + self.fat - ax)
            ay = ay + k * (0.8 * self.body_ay - ay)
        return ax, ay

    def cavity(self, z: float) -> tuple[float, float, float, float]:
        """Thoracic cavity (inside the ribs): centre y, semi-axes and cage scale."""
        ax, ay = self.body_axes(z)
        wall = self.fat + self.muscle + self.rib
        t = self.t(z)
        scale = 1.0 if t < 0.6 else max(0.55, 1.0 - 0.8 * (t - 0.6))
        cav_ax = (ax - wall) * scale
        cav_ay = (ay - wall - self.back_extra) * (0.5 + 0.5 * scale)
        return self.shift_y - self.back_extra, cav_ax, cav_ay, scale

    def spine_y(self, z: float) -> float:
        """Centre y of the vertebral body (it bulges into the back of the cavity)."""
        cy, _, cav_ay, _ = self.cavity(0.3 * self.lung_height)
        return cy + cav_ay - 0.5 * self.vb_r + 6.0 * math.sin(math.pi * self.t(z))

    def heart_centre(self) -> tuple[float, float, float]:
        """Heart centre (x, y, z) in mm: anterior in the cavity, left of the midline."""
        hx, gap, hz = self.heart
        cy, _, cav_ay, _ = self.cavity(0.3 * self.lung_height)
        return self.shift_x + hx, cy - cav_ay + self.heart_axes[1] + gap, hz

    def dome_z(self, xs: FloatArray, ys: FloatArray) -> FloatArray:
        """Height of the diaphragm surface (two domes, the left one lower)."""
        sx = self.mediastinum / 2 + 45.0
        out = np.full((ys.size, xs.size), -1e4, dtype=np.float32)
        for side, top in ((-1.0, 0.0), (1.0, self.dome_rise_l)):
            dx = (xs - self.shift_x - side * sx)[None, :] / self.dome_radius
            dy = (ys - self.shift_y + 15.0)[:, None] / (0.9 * self.dome_radius)
            out = np.maximum(out, (top - 45.0 * (dx**2 + dy**2)).astype(np.float32))
        return out


def _sample_breasts(
    rng: np.random.Generator, body_ax: float, lung_height: float
) -> tuple[Breast, ...]:
    if rng.random() >= 0.5:
        return ()
    return sample_breast_pair(rng, body_ax, lung_height)


def sample_breast_pair(
    rng: np.random.Generator, body_ax: float, lung_height: float, min_size: float = 0.0
) -> tuple[Breast, Breast]:
    """Two breasts (left first) of one random size in [min_size, 1)."""
    x = rng.uniform(0.35, 0.6) * body_ax
    z = rng.uniform(0.2, 0.42) * lung_height
    size = rng.uniform(min_size, 1.0)
    out = []
    for side in (1.0, -1.0):
        out.append(
            Breast(
                x=side * (x + rng.uniform(-6, 6)),
                z=z + rng.uniform(-6, 6),
                rx=35 + 35 * size + rng.uniform(-4, 4),
                rz=35 + 30 * size + rng.uniform(-4, 4),
                depth=20 + 70 * size + rng.uniform(-5, 5),
                sag=rng.uniform(0, 0.4) * size,
                density=rng.uniform(0.45, 0.85),
            )
        )
    return out[0], out[1]


def _sample_vessels(rng: np.random.Generator, a: Anatomy) -> tuple[_Sphere, ...]:
    spheres: list[_Sphere] = []
    for side in (1.0, -1.0):
        hilum = (
            a.shift_x + side * (a.mediastinum / 2 + 12.0),
            a.shift_y - 10.0,
            0.5 * a.lung_height,
        )
        for _ in range(10):
            d = np.array([side * rng.uniform(0.3, 1.0), rng.uniform(-0.8, 0.8), rng.uniform(-1, 1)])
            d /= np.linalg.norm(d)
            r, pos = rng.uniform(3.5, 5.5), np.array(hilum)
            length = rng.uniform(60, 120)
            travelled = 0.0
            while travelled < length and r > 1.2:
                spheres.append(_Sphere(float(pos[0]), float(pos[1]), float(pos[2]), float(r)))
                step = 0.8 * r
                pos = pos + step * d
                travelled += step
                r *= 0.97
    return tuple(spheres)


def _replace_vessels(a: Anatomy, vessels: tuple[_Sphere, ...]) -> Anatomy:
    from dataclasses import replace

    return replace(a, vessels=vessels)


# --------------------------------------------------------------------------- rendering


@dataclass
class _Slice:
    """Work arrays of one axial slice."""

    hu: FloatArray
    label: LabelArray


def render_slice(
    a: Anatomy, xs: FloatArray, ys: FloatArray, z: float
) -> tuple[FloatArray, LabelArray]:
    """HU and labels of one axial slice; ``xs`` column and ``ys`` row positions in mm."""
    tis = a.tissues
    s = _Slice(
        hu=np.full((ys.size, xs.size), -1000.0, dtype=np.float32),
        label=np.zeros((ys.size, xs.size), dtype=np.uint8),
    )
    body = _paint_body(s, a, xs, ys, z)
    cav_cy, cav_ax, cav_ay, _ = a.cavity(z)
    cavity = superellipse(xs, ys, a.shift_x, cav_cy, cav_ax, cav_ay, a.body_power) & body
    neck = z > a.apex_z + 15.0
    if not neck:
        _paint_ribs(s, a, xs, ys, z, cavity)
    s.hu[cavity] = tis.muscle if neck else tis.fat
    below = cavity & (a.dome_z(xs, ys) > z)
    _paint_abdomen(s, a, xs, ys, z, below)
    _paint_lungs(s, a, xs, ys, z, cavity & ~below)
    _paint_heart(s, a, xs, ys, z, below, cavity)
    _paint_aorta(s, a, xs, ys, z, cavity)
    _paint_airway(s, a, xs, ys, z)
    _paint_esophagus(s, a, xs, ys, z)
    _paint_spine(s, a, xs, ys, z)
    if a.couch:
        _paint_couch(s, a, xs, ys)
    return s.hu, s.label


def _paint_body(s: _Slice, a: Anatomy, xs: FloatArray, ys: FloatArray, z: float) -> BoolArray:
    tis = a.tissues
    ax, ay = a.body_axes(z)
    body = superellipse(xs, ys, a.shift_x, a.shift_y, ax, ay, a.body_power)
    inner = superellipse(xs, ys, a.shift_x, a.shift_y, ax - a.fat, ay - a.fat, a.body_power)
    s.hu[body] = tis.fat
    s.hu[inner] = tis.muscle
    s.label[body] = BODY
    for index, breast in enumerate(a.breasts):
        side = (xs >= a.shift_x) if index == 0 else (xs < a.shift_x)  # split at the midline
        mask = _breast(a, breast, xs, ys, z, inner) & side[None, :]
        if mask.any():
            gland = a.gland_texture.at(xs, ys, z)[mask]
            mix = np.clip(breast.density + 0.45 * gland, 0.0, 1.0)
            s.hu[mask] = tis.fat + mix * (tis.gland - tis.fat)
            s.label[mask] = BREAST_L if index == 0 else BREAST_R
            body |= mask
    return body


def _breast(
    a: Anatomy, b: Breast, xs: FloatArray, ys: FloatArray, z: float, muscle: BoolArray
) -> BoolArray:
    """The breast's cross-section: an ellipsoid on the chest wall, outside the muscle."""
    zc = b.z - b.sag * b.rz
    dz = (z - zc) / b.rz
    if abs(dz) >= 1.0:
        return np.zeros((ys.size, xs.size), dtype=bool)
    k = math.sqrt(1.0 - dz * dz)
    ax_b, ay_b = a.body_axes(z)
    wall_ax, wall_ay = ax_b - a.fat, ay_b - a.fat
    rel = min(abs(b.x) / wall_ax, 0.95)
    wall_y = a.shift_y - wall_ay * (1.0 - rel**a.body_power) ** (1.0 / a.body_power)
    cx = a.shift_x + b.x
    ellipse = superellipse(xs, ys, cx, wall_y, b.rx * k, (b.depth + a.fat) * k)
    return ellipse & ~muscle  # bounded behind by the pectoral muscle


def _paint_ribs(
    s: _Slice, a: Anatomy, xs: FloatArray, ys: FloatArray, z: float, cavity: BoolArray
) -> None:
    tis = a.tissues
    cav_cy, cav_ax, cav_ay, _ = a.cavity(z)
    cage = superellipse(xs, ys, a.shift_x, cav_cy, cav_ax + a.rib, cav_ay + a.rib, a.body_power)
    ring = cage & ~cavity
    rel_y = (ys - cav_cy)[:, None] / max(cav_ay, 1.0)
    phase = ((z - 25.0 * rel_y) / a.rib_pitch + a.rib_phase) % 1.0
    rib_on = ring & (phase < 0.42)
    front = (np.abs(xs - a.shift_x) < 0.35 * cav_ax)[None, :] & (rel_y < 0)
    s.hu[rib_on] = tis.cortical
    s.hu[rib_on & front] = tis.cartilage
    sternum = superellipse(xs, ys, a.shift_x, cav_cy - cav_ay - 0.5 * a.rib, 16.0, 0.6 * a.rib)
    if z > -30.0:
        s.hu[sternum & ring] = tis.cancellous + 100.0


def _paint_abdomen(
    s: _Slice, a: Anatomy, xs: FloatArray, ys: FloatArray, z: float, below: BoolArray
) -> None:
    if not below.any():
        return
    tis = a.tissues
    s.hu[below] = tis.muscle
    liver_side = (xs - a.shift_x < 20.0)[None, :]
    s.hu[below & liver_side] = tis.liver
    stomach = superellipse(xs, ys, a.shift_x + 60.0, a.shift_y - 35.0, 35.0, 28.0)
    s.hu[below & stomach] = -1000.0 if z > a.dome_rise_l - 40.0 else tis.muscle


def _paint_lungs(
    s: _Slice, a: Anatomy, xs: FloatArray, ys: FloatArray, z: float, space: BoolArray
) -> None:
    t = a.t(z)
    if t > 1.0 or t < -0.4:
        return
    tis = a.tissues
    cav_cy, cav_ax, cav_ay, scale = a.cavity(z)
    profile = 1.0 if t <= 0.55 else math.sqrt(max(0.0, 1.0 - ((t - 0.55) / 0.45) ** 2))
    pleura = superellipse(xs, ys, a.shift_x, cav_cy, cav_ax - 2.0, cav_ay - 2.0, a.body_power)
    texture = None
    for side, label, size in ((1.0, LUNG_L, a.lung_scale_l), (-1.0, LUNG_R, a.lung_scale_r)):
        half = a.mediastinum / 2 * (0.6 + 0.4 * scale)
        lax = max((cav_ax - half) / 2.0, 5.0) * size
        cx = a.shift_x + side * (half + lax)
        lay = cav_ay * a.lung_ay_frac * size
        lung = superellipse(xs, ys, cx, cav_cy + a.lung_cy, lax * profile, lay * profile, 2.2)
        lung &= pleura & space
        if not lung.any():
            continue
        if texture is None:
            grad = (ys - cav_cy)[:, None] / max(cav_ay, 1.0) * a.tissues.lung_gradient
            texture = a.lung_texture.at(xs, ys, z) + grad.astype(np.float32)
        s.hu[lung] = tis.lung + texture[lung]
        vessels = _spheres(a.vessels, xs, ys, z) & lung
        s.hu[vessels] = tis.blood
        s.label[lung] = label


def _spheres(spheres: tuple[_Sphere, ...], xs: FloatArray, ys: FloatArray, z: float) -> BoolArray:
    out = np.zeros((ys.size, xs.size), dtype=bool)
    for sp in spheres:
        dz = z - sp.z
        if abs(dz) < sp.r:
            r = math.sqrt(sp.r * sp.r - dz * dz)
            out |= superellipse(xs, ys, sp.x, sp.y, r, r)
    return out


def _heart(a: Anatomy, xs: FloatArray, ys: FloatArray, z: float, grow: float) -> BoolArray:
    hx, hy, hz = a.heart_centre()
    ha, hb, hc = (v + grow for v in a.heart_axes)
    dz = (z - hz) / hc
    if abs(dz) >= 1.0:
        return np.zeros((ys.size, xs.size), dtype=bool)
    k = math.sqrt(1.0 - dz * dz)
    return rotated_ellipse(xs, ys, hx, hy, ha * k, hb * k, a.heart_angle)


def _paint_heart(
    s: _Slice,
    a: Anatomy,
    xs: FloatArray,
    ys: FloatArray,
    z: float,
    below: BoolArray,
    cavity: BoolArray,
) -> None:
    outer = _heart(a, xs, ys, z, 0.0) & ~below & cavity
    if not outer.any():
        return
    tis = a.tissues
    lifted = a.dome_z(xs, ys) + a.heart_fat < z
    heart = _heart(a, xs, ys, z, -a.heart_fat) & lifted & outer
    blood = _heart(a, xs, ys, z, -a.heart_fat - a.heart_wall) & heart
    s.hu[outer] = tis.fat
    s.label[outer] = BODY
    s.hu[heart] = tis.myocardium
    s.hu[blood] = tis.blood
    s.label[heart] = HEART


def _aorta_centres(a: Anatomy, z: float) -> tuple[tuple[float, float], tuple[float, float]]:
    spine_y = a.spine_y(z)
    desc = (a.shift_x + a.vb_r * 0.5 + a.aorta_r + 6.0, spine_y - 0.6 * a.vb_r)
    hx, hy, _ = a.heart_centre()
    asc = (hx - 25.0, hy + 15.0)
    return asc, desc


def _paint_aorta(
    s: _Slice, a: Anatomy, xs: FloatArray, ys: FloatArray, z: float, cavity: BoolArray
) -> None:
    arch_z = a.arch_t * a.lung_height
    r = a.aorta_r
    if z > arch_z + r:
        return
    asc, desc = _aorta_centres(a, z)
    vessel = np.zeros((ys.size, xs.size), dtype=bool)
    if z <= arch_z:
        vessel |= superellipse(xs, ys, desc[0], desc[1], r, r)
    heart_top = a.heart_centre()[2] + 0.6 * a.heart_axes[2]
    if heart_top < z <= arch_z:
        vessel |= superellipse(xs, ys, asc[0], asc[1], r, r)
    if abs(z - arch_z) < r:
        vessel |= _capsule(xs, ys, asc, desc, math.sqrt(r * r - (z - arch_z) ** 2))
    vessel &= cavity
    _paint_with_rim(s, a, xs, vessel, a.tissues.blood, BODY)


def _paint_with_rim(
    s: _Slice,
    a: Anatomy,
    xs: FloatArray,
    mask: BoolArray,
    hu: float,
    label: int,
    rim_mm: float = 2.0,
) -> None:
    """Paint ``mask`` over body tissue and lungs, with a fat rim around it."""
    free = (s.label == BODY) | (s.label == LUNG_L) | (s.label == LUNG_R)
    rim = _grow(mask, xs, rim_mm) & ~mask & free
    s.hu[rim] = a.tissues.fat
    s.label[rim] = BODY
    paint = mask & (free | (s.label == label))
    s.hu[paint] = hu
    s.label[paint] = label


def _grow(mask: BoolArray, xs: FloatArray, mm: float) -> BoolArray:
    step = abs(float(xs[1] - xs[0])) if xs.size > 1 else 1.0
    radius = max(1, round(mm / step))
    grown: BoolArray = ndimage.binary_dilation(mask, iterations=radius)
    return grown


def _airway_centre(a: Anatomy, z: float) -> float:
    eso_y = _esophagus_y(a, z)
    return eso_y - a.eso_axes[1] - a.trachea_r - 3.0


def _paint_airway(s: _Slice, a: Anatomy, xs: FloatArray, ys: FloatArray, z: float) -> None:
    t = a.t(z)
    r = a.trachea_r
    y = _airway_centre(a, z)
    if t >= a.carina_t:
        wall = superellipse(xs, ys, a.shift_x, y, r + 2.0, r + 2.0)
        air = superellipse(xs, ys, a.shift_x, y, r, r)
    else:
        depth = (a.carina_t - t) / 0.12
        if depth > 1.0:
            return
        off = 4.0 + 0.6 * r + 28.0 * depth
        wall = np.zeros((ys.size, xs.size), dtype=bool)
        air = np.zeros_like(wall)
        for side in (1.0, -1.0):
            rb = 0.7 * r
            wall |= superellipse(xs, ys, a.shift_x + side * off, y + 2.0, rb + 1.5, rb + 1.5)
            air |= superellipse(xs, ys, a.shift_x + side * off, y + 2.0, rb, rb)
    inside = s.label != 0
    s.hu[wall & inside] = a.tissues.cartilage
    s.hu[air & inside] = -1000.0
    s.label[(wall | air) & inside] = BODY


def _esophagus_y(a: Anatomy, z: float) -> float:
    return a.spine_y(z) - a.vb_r - a.eso_gap - a.eso_axes[1]


def _paint_esophagus(s: _Slice, a: Anatomy, xs: FloatArray, ys: FloatArray, z: float) -> None:
    if z < a.eso_end:
        return
    ex, ey = a.eso_axes
    x = a.shift_x + a.eso_x + 3.0 * math.sin(z / 40.0 + a.seed)
    y = _esophagus_y(a, z)
    if z < 0.0:  # toward the stomach, left and anterior
        x += 0.8 * (-z)
        y -= 0.6 * (-z)
    mask = superellipse(xs, ys, x, y, ex, ey) & (s.label != 0)
    _paint_with_rim(s, a, xs, mask, a.tissues.muscle, ESOPHAGUS)
    if a.eso_lumen > 0:
        s.hu[superellipse(xs, ys, x, y, a.eso_lumen * 1.4, a.eso_lumen * 0.7) & mask] = -1000.0


def _paint_spine(s: _Slice, a: Anatomy, xs: FloatArray, ys: FloatArray, z: float) -> None:
    tis = a.tissues
    x0, vy = a.shift_x, a.spine_y(z)
    canal_y = vy + a.vb_r + a.canal_r + 2.0
    arch = superellipse(xs, ys, x0, canal_y, a.canal_r + 6.0, a.canal_r + 5.0)
    spinous = superellipse(xs, ys, x0, canal_y + a.canal_r + 12.0, 5.0, 11.0)
    transverse = superellipse(xs, ys, x0, canal_y - 2.0, a.canal_r + 22.0, 5.0)
    body = superellipse(xs, ys, x0, vy, a.vb_r, 0.9 * a.vb_r)
    cortex = body & ~superellipse(xs, ys, x0, vy, a.vb_r - 1.8, 0.9 * a.vb_r - 1.8)
    disc = ((z / a.vertebra_pitch) % 1.0) < 0.22
    inside = s.label != 0
    posterior = (arch | spinous | transverse) & inside
    s.hu[posterior] = tis.cortical * 0.8
    s.label[posterior] = BODY
    s.hu[body] = 80.0 if disc else tis.cancellous
    s.label[body] = BODY
    if not disc:
        s.hu[cortex] = tis.cortical
    canal = superellipse(xs, ys, x0, canal_y, a.canal_r, a.canal_r * 0.9)
    cord = superellipse(xs, ys, x0, canal_y - 0.5, *a.cord_axes)
    s.hu[canal] = tis.csf
    s.label[canal] = BODY
    s.hu[cord] = tis.cord
    s.label[cord] = CORD


def _paint_couch(s: _Slice, a: Anatomy, xs: FloatArray, ys: FloatArray) -> None:
    top = a.shift_y + a.body_ay * 1.05 + 8.0
    across = (np.abs(xs) <= 240.0)[None, :]
    skin = ((ys >= top) & (ys < top + 3.0)) | ((ys >= top + 25.0) & (ys < top + 28.0))
    core = (ys >= top + 3.0) & (ys < top + 25.0)
    free = s.label == 0
    s.hu[core[:, None] & across & free] = -300.0
    s.hu[skin[:, None] & across & free] = 150.0


# --------------------------------------------------------------------------- volumes


@dataclass(frozen=True)
class Acquisition:
    """How a phantom is scanned: grid, blur and noise.

    ``xs`` are patient x of the columns, ``ys`` patient y of the rows, ``zs`` patient z of
    the slices, all in mm (HFS: x ascending; FFS: x descending).
    """

    xs: FloatArray
    ys: FloatArray
    zs: FloatArray
    blur_px: tuple[float, float, float] = (0.4, 0.6, 0.6)
    noise_hu: float = 20.0
    noise_seed: int = 0


def render_labels(a: Anatomy, xs: FloatArray, ys: FloatArray, zs: FloatArray) -> LabelArray:
    """Exact labels at voxel centres, (slice, row, column)."""
    return np.stack([render_slice(a, xs, ys, float(z))[1] for z in zs])


def scan(a: Anatomy, acq: Acquisition) -> tuple[FloatArray, LabelArray]:
    """HU volume (partial-volume blur + noise) and exact labels, (slice, row, column)."""
    slices = [render_slice(a, acq.xs, acq.ys, float(z)) for z in acq.zs]
    hu = np.stack([h for h, _ in slices])
    labels = np.stack([lab for _, lab in slices])
    hu = ndimage.gaussian_filter(hu, sigma=acq.blur_px, mode="nearest")
    rng = np.random.default_rng(acq.noise_seed)
    noise = rng.standard_normal(hu.shape, dtype=np.float32)
    noise = ndimage.gaussian_filter(noise, sigma=(0.0, 0.5, 0.5)) * np.float32(2.0)
    hu += noise * np.float32(acq.noise_hu)
    return np.clip(hu, -1024.0, 3071.0), labels


def z_range(a: Anatomy, rng: np.random.Generator) -> tuple[float, float]:
    """A plausible scan range for a thorax planning CT of this anatomy."""
    return -rng.uniform(30.0, 90.0), a.apex_z + rng.uniform(15.0, 60.0)
