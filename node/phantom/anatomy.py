"""An analytic adult body for synthetic 124I PET/CT studies.

Shapes live in *body coordinates* (mm): x to the patient's left, y posterior, z superior (the DICOM
LPS axes, PS3.3 C.7.6.2.1.1), origin at the vertex on the midline, so z is negative down the body.
The scanner sees the body through a rigid transform (table offset, repositioning between scans).

Values are plain anatomy/physiology, not tuned to any detector: CT numbers after the usual ranges
(air -1000, lung about -850, fat about -100, soft tissue 30-60, cancellous bone 200-400, cortical
bone 700-1000 HU); 124I SUVs after published 24 h biodistributions (physiological uptake in
salivary glands, stomach, bowel and bladder; low blood pool and lung).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

Array = np.ndarray


class Shape(Protocol):
    """A solid in body coordinates with an axis-aligned bounding box."""

    def contains(self, x: Array, y: Array, z: Array) -> Array: ...

    def bbox(self) -> tuple[Array, Array]: ...


@dataclass(frozen=True)
class Ellipsoid:
    center: tuple[float, float, float]
    semi: tuple[float, float, float]

    def contains(self, x: Array, y: Array, z: Array) -> Array:
        cx, cy, cz = self.center
        ax, ay, az = self.semi
        return ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 + ((z - cz) / az) ** 2 <= 1.0

    def bbox(self) -> tuple[Array, Array]:
        c, s = np.array(self.center), np.array(self.semi)
        return c - s, c + s


def sphere(center: tuple[float, float, float], diameter_mm: float) -> Ellipsoid:
    r = diameter_mm / 2.0
    return Ellipsoid(center, (r, r, r))


@dataclass(frozen=True)
class EllipticCylinder:
    """A cylinder along z with an elliptical cross-section."""

    center_xy: tuple[float, float]
    semi_xy: tuple[float, float]
    z_min: float
    z_max: float

    def contains(self, x: Array, y: Array, z: Array) -> Array:
        cx, cy = self.center_xy
        ax, ay = self.semi_xy
        return (((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 <= 1.0) & (z >= self.z_min) & (z <= self.z_max)

    def bbox(self) -> tuple[Array, Array]:
        cx, cy = self.center_xy
        ax, ay = self.semi_xy
        return np.array([cx - ax, cy - ay, self.z_min]), np.array([cx + ax, cy + ay, self.z_max])


@dataclass(frozen=True)
class Box:
    lo: tuple[float, float, float]
    hi: tuple[float, float, float]

    def contains(self, x: Array, y: Array, z: Array) -> Array:
        return (
            (x >= self.lo[0]) & (x <= self.hi[0])
            & (y >= self.lo[1]) & (y <= self.hi[1])
            & (z >= self.lo[2]) & (z <= self.hi[2])
        )

    def bbox(self) -> tuple[Array, Array]:
        return np.array(self.lo, float), np.array(self.hi, float)


@dataclass(frozen=True)
class Difference:
    """`outer` without `inner`: shells such as cortical bone or the skull."""

    outer: Shape
    inner: Shape

    def contains(self, x: Array, y: Array, z: Array) -> Array:
        return self.outer.contains(x, y, z) & ~self.inner.contains(x, y, z)

    def bbox(self) -> tuple[Array, Array]:
        return self.outer.bbox()


@dataclass(frozen=True)
class ZPeriodic:
    """`base` kept only in bands along z (rib-like: `band_mm` of bone every `period_mm`)."""

    base: Shape
    period_mm: float
    band_mm: float

    def contains(self, x: Array, y: Array, z: Array) -> Array:
        return self.base.contains(x, y, z) & (np.mod(z, self.period_mm) < self.band_mm)

    def bbox(self) -> tuple[Array, Array]:
        return self.base.bbox()


# Region kinds written to truth.json.
BACKGROUND = "background"
PHYSIOLOGICAL = "physiological"
REMNANT = "remnant"
METASTASIS = "metastasis"
NON_AVID = "non-avid"


@dataclass(frozen=True)
class Region:
    """A named piece of anatomy: CT number and 124I SUV (None: leaves that image untouched)."""

    name: str
    kind: str
    shape: Shape
    hu: float | None
    suv: float | None
    site: str = ""
    diameter_mm: float | None = None
    center: tuple[float, float, float] | None = None
    biological_half_life_h: float | None = None
    change: str | None = None
    report: bool = True  # False: part of another region (a lesion's core), not listed in truth.json


@dataclass(frozen=True)
class Kinetics:
    """Lesion retention of 124I (fraction of the administered activity, decay-corrected).

    r(t) = (1 - exp(-k_up t)) exp(-k_bio t), normalised to 1 at the reference uptake time, so an
    SUV given at 24 h scales to any other uptake time of the same administration.
    """

    uptake_half_time_h: float = 4.0
    biological_half_life_h: float = 120.0

    def relative_retention(self, t_h: float, reference_h: float = 24.0) -> float:
        def r(t: float) -> float:
            k_up = math.log(2) / self.uptake_half_time_h
            k_bio = math.log(2) / self.biological_half_life_h
            return (1.0 - math.exp(-k_up * t)) * math.exp(-k_bio * t)

        return r(t_h) / r(reference_h)


@dataclass(frozen=True)
class LesionSpec:
    name: str
    kind: str
    site: str
    center: tuple[float, float, float]
    diameter_mm: float
    suv_24h: float
    hu: float
    wholebody_only: bool = False


# Lesion catalogue in body coordinates. Sites follow where DTC metastasises: lungs (many small
# nodules), bone, cervical and mediastinal nodes; one CT-visible nodule without iodine uptake.
LESIONS: tuple[LesionSpec, ...] = (
    LesionSpec("lung_r_upper", METASTASIS, "lung", (-80.0, -10.0, -310.0), 8.0, 9.0, 35.0),
    LesionSpec("lung_l_upper", METASTASIS, "lung", (90.0, 20.0, -330.0), 20.0, 12.0, 35.0),
    LesionSpec("lung_r_lower", METASTASIS, "lung", (-95.0, 40.0, -460.0), 6.0, 10.0, 35.0),
    LesionSpec("lung_l_lower", METASTASIS, "lung", (80.0, 45.0, -470.0), 12.0, 8.0, 35.0),
    LesionSpec("lung_r_middle", METASTASIS, "lung", (-60.0, -40.0, -420.0), 10.0, 6.0, 35.0),
    LesionSpec("lung_l_lingula", METASTASIS, "lung", (100.0, -25.0, -405.0), 14.0, 15.0, 35.0),
    LesionSpec("node_cervical_r", METASTASIS, "lymph node (cervical)", (-38.0, -15.0, -215.0), 12.0, 10.0, 45.0),
    LesionSpec("node_cervical_l", METASTASIS, "lymph node (cervical)", (28.0, -32.0, -196.0), 10.0, 7.0, 45.0),
    LesionSpec("node_mediastinal", METASTASIS, "lymph node (mediastinal)", (8.0, -45.0, -345.0), 32.0, 7.0, 45.0),
    LesionSpec("bone_vertebra_t8", METASTASIS, "bone", (0.0, 72.0, -420.0), 18.0, 12.0, 120.0),
    LesionSpec("bone_ilium_r", METASTASIS, "bone", (-110.0, 35.0, -790.0), 34.0, 10.0, 150.0, True),
    LesionSpec("lung_nonavid", NON_AVID, "lung", (-100.0, 10.0, -370.0), 16.0, 0.5, 35.0),
)


def _background_regions() -> list[Region]:
    """Body, organs and bones in painting order (a later region overrides an earlier one)."""
    B, P = BACKGROUND, PHYSIOLOGICAL
    r: list[Region] = []

    def add(name: str, kind: str, shape: Shape, hu: float | None, suv: float | None, site: str = "") -> None:
        r.append(Region(name, kind, shape, hu, suv, site=site or name))

    # Outer body: subcutaneous fat, then muscle/soft tissue inside.
    add("head_soft_tissue", B, Ellipsoid((0, 0, -115), (75, 95, 110)), 40, 0.4)
    add("neck", B, EllipticCylinder((0, 10), (58, 62), -245, -170), 40, 0.5)
    add("shoulders_fat", B, Ellipsoid((0, 5, -300), (200, 108, 70)), -100, 0.15)
    add("trunk_fat", B, EllipticCylinder((0, 0), (170, 115), -720, -240), -100, 0.15)
    add("pelvis_fat", B, EllipticCylinder((0, 5), (175, 120), -920, -700), -100, 0.15)
    add("shoulders_muscle", B, Ellipsoid((0, 5, -300), (185, 93, 60)), 50, 0.5)
    add("trunk_muscle", B, EllipticCylinder((0, 0), (155, 100), -720, -245), 45, 0.5)
    add("pelvis_muscle", B, EllipticCylinder((0, 5), (160, 105), -920, -700), 45, 0.5)
    for side in (-1, 1):
        add(f"leg_{'lr'[side > 0]}", B, EllipticCylinder((95 * side, 10), (80, 80), -1200, -915), 45, 0.45)

    # Head.
    brain = Ellipsoid((0, 5, -80), (62, 80, 70))
    add("skull", B, Difference(Ellipsoid((0, 5, -80), (69, 87, 77)), brain), 1000, 0.3, "bone")
    add("brain", B, brain, 35, 0.2)
    add("nasal_mucosa", P, Ellipsoid((0, -75, -120), (10, 14, 18)), 20, 4.0, "nasal mucosa")
    for side in (-1, 1):
        s = "lr"[side > 0]
        add(f"parotid_{s}", P, Ellipsoid((52 * side, 5, -140), (16, 20, 24)), 30, 9.0, "salivary gland")
        add(f"submandibular_{s}", P, Ellipsoid((38 * side, -35, -180), (13, 11, 10)), 30, 7.0, "salivary gland")

    # Airway, lungs, heart, mediastinum.
    add("trachea", B, EllipticCylinder((0, -15), (9, 9), -330, -175), -1000, 0.0)
    add("liver", B, Ellipsoid((-65, -5, -540), (95, 85, 80)), 60, 0.8)
    for side in (-1, 1):
        add(f"lung_{'lr'[side > 0]}", B, Ellipsoid((85 * side, 5, -390), (62, 82, 135)), -850, 0.12, "lung")
    add("heart", B, Ellipsoid((25, -25, -440), (55, 50, 55)), 40, 1.0, "blood pool")

    # Abdomen and pelvis.
    add("stomach", P, Ellipsoid((65, -35, -530), (45, 35, 50)), 25, 8.0, "stomach")
    add("spleen", B, Ellipsoid((95, 40, -545), (30, 40, 50)), 45, 0.6)
    for side in (-1, 1):
        add(f"kidney_{'lr'[side > 0]}", B, Ellipsoid((75 * side, 50, -600), (30, 25, 55)), 35, 1.5, "kidney")
    add("colon_transverse", P, Ellipsoid((0, -60, -640), (110, 22, 22)), 0, 2.5, "bowel")
    add("colon_descending", P, EllipticCylinder((105, -25), (20, 20), -760, -640), 0, 2.0, "bowel")
    add("bladder", P, Ellipsoid((0, -40, -870), (45, 38, 35)), 10, 35.0, "bladder")

    # Skeleton: cortical shells with cancellous bone inside.
    def bone(name: str, outer: Shape, inner: Shape) -> None:
        add(f"{name}_cortex", B, outer, 800, 0.35, "bone")
        add(f"{name}_marrow", B, inner, 280, 0.35, "bone")

    bone("spine_cervical", EllipticCylinder((0, 30), (12, 12), -245, -170),
         EllipticCylinder((0, 30), (9, 9), -245, -170))
    bone("spine_thoracolumbar", EllipticCylinder((0, 72), (17, 17), -700, -245),
         EllipticCylinder((0, 72), (14, 14), -700, -245))
    bone("sacrum", EllipticCylinder((0, 60), (18, 18), -920, -700), EllipticCylinder((0, 60), (15, 15), -920, -700))
    add("sternum", B, Box((-15, -108, -430), (15, -96, -260)), 400, 0.35, "bone")
    ribs = Difference(EllipticCylinder((0, 0), (160, 105), -560, -260), EllipticCylinder((0, 0), (150, 95), -560, -260))
    add("ribs", B, ZPeriodic(ribs, 25.0, 9.0), 700, 0.35, "bone")
    for side in (-1, 1):
        s = "lr"[side > 0]
        bone(f"ilium_{s}", Ellipsoid((110 * side, 35, -790), (55, 25, 55)),
             Ellipsoid((110 * side, 35, -790), (49, 19, 49)))
        bone(f"femoral_head_{s}", sphere((95 * side, 10, -905), 50), sphere((95 * side, 10, -905), 42))
        add(f"femur_{s}", B, EllipticCylinder((95 * side, 10), (14, 14), -1200, -930), 900, 0.3, "bone")

    # Thyroid bed remnant after thyroidectomy: small, very avid, anterior to the trachea.
    r.append(Region("thyroid_bed_remnant", REMNANT, sphere((8, -30, -222), 13), 45, 60.0,
                    site="thyroid bed", diameter_mm=13, center=(8, -30, -222)))
    return r


@dataclass(frozen=True)
class PatientModel:
    """Anatomy with per-seed lesion jitter and uptakes, at one time point and uptake time."""

    regions: tuple[Region, ...]
    kinetics: dict[str, Kinetics] = field(default_factory=dict)


CHANGE_FACTORS: dict[str, tuple[float, float]] = {
    "gained": (1.5, 2.0),
    "stable": (0.92, 1.08),
    "reduced": (0.45, 0.65),
}


def build_patient(
    seed: int, timepoint: int = 1, uptake_h: float = 24.0, wholebody: bool = True,
    change_factors: dict[str, tuple[float, float]] | None = None,
) -> PatientModel:
    """Regions for one scan. Lesion positions and uptakes vary with `seed`; a later `timepoint`
    changes each metastasis' uptake (gained, stable, reduced, or lost = refractory)."""
    rng = np.random.default_rng([seed, 124])
    regions = _background_regions()
    specs = [s for s in LESIONS if wholebody or not s.wholebody_only]

    # Per-lesion draws happen for the whole catalogue so small and whole-body agree lesion by lesion.
    jitter = {s.name: rng.uniform(-3.0, 3.0, size=3) for s in LESIONS}
    uptake_scale = {s.name: float(rng.uniform(0.85, 1.2)) for s in LESIONS}
    t_bio = {s.name: float(rng.uniform(60.0, 200.0)) for s in LESIONS}
    changes = _assign_changes(seed)

    kinetics: dict[str, Kinetics] = {}
    for spec in specs:
        center = tuple(float(v) for v in np.array(spec.center) + jitter[spec.name])
        suv = spec.suv_24h
        change: str | None = None
        kind = spec.kind
        if spec.kind == METASTASIS:
            suv *= uptake_scale[spec.name]
            kin = Kinetics(biological_half_life_h=t_bio[spec.name])
            kinetics[spec.name] = kin
            suv *= kin.relative_retention(uptake_h)
            if timepoint >= 2:
                change = changes[spec.name]
                if change == "lost":
                    # Lost uptake: the lesion stays on CT but holds no more iodine than soft tissue.
                    suv, kind = 0.5, NON_AVID
                else:
                    lo, hi = {**CHANGE_FACTORS, **(change_factors or {})}[change]
                    suv *= float(np.random.default_rng([seed, timepoint, hash_name(spec.name)]).uniform(lo, hi))
        regions.append(
            Region(
                spec.name, kind, sphere(center, spec.diameter_mm), spec.hu, round(suv, 4),
                site=spec.site, diameter_mm=spec.diameter_mm, center=center,
                biological_half_life_h=kinetics[spec.name].biological_half_life_h if spec.name in kinetics else None,
                change=change,
            )
        )
    return PatientModel(tuple(regions), kinetics)


def hash_name(name: str) -> int:
    """A stable small integer for a name (Python's hash() is salted per process)."""
    return sum((i + 1) * ord(c) for i, c in enumerate(name))


def _assign_changes(seed: int) -> dict[str, str]:
    """Per-metastasis change between scans: exactly one lost (>= 10 mm, so it was visible at scan 1),
    then gained / stable / reduced spread over the rest."""
    rng = np.random.default_rng([seed, 2])
    mets = [s for s in LESIONS if s.kind == METASTASIS]
    order = [mets[i] for i in rng.permutation(len(mets))]
    lost = next(s for s in order if s.diameter_mm >= 10 and not s.wholebody_only)
    rest = [s for s in order if s is not lost]
    cycle = ("gained", "gained", "stable", "reduced")
    out = {lost.name: "lost"}
    for i, s in enumerate(rest):
        out[s.name] = cycle[i % len(cycle)]
    return out


@dataclass(frozen=True)
class RigidTransform:
    """Body -> scanner: X = R b + t (R a rotation about z then x, angles in degrees)."""

    rot_z_deg: float = 0.0
    rot_x_deg: float = 0.0
    translation: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @property
    def matrix(self) -> Array:
        a, b = math.radians(self.rot_z_deg), math.radians(self.rot_x_deg)
        rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
        rx = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
        return rx @ rz

    def to_scanner(self, p: Array) -> Array:
        return self.matrix @ np.asarray(p, float) + np.asarray(self.translation)

    def to_body(self, x: Array, y: Array, z: Array) -> tuple[Array, Array, Array]:
        m = self.matrix.T  # inverse rotation
        dx, dy, dz = x - self.translation[0], y - self.translation[1], z - self.translation[2]
        return (m[0, 0] * dx + m[0, 1] * dy + m[0, 2] * dz,
                m[1, 0] * dx + m[1, 1] * dy + m[1, 2] * dz,
                m[2, 0] * dx + m[2, 1] * dy + m[2, 2] * dz)

    def scanner_bbox(self, lo: Array, hi: Array) -> tuple[Array, Array]:
        corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
        pts = (self.matrix @ corners.T).T + np.asarray(self.translation)
        return pts.min(axis=0), pts.max(axis=0)


def patient_position(seed: int, timepoint: int) -> RigidTransform:
    """Where the patient lies on the table: scan 1 nearly straight, later scans repositioned
    (a few mm to cm of shift, a few degrees of rotation), as between two real visits."""
    rng = np.random.default_rng([seed, timepoint, 7])
    if timepoint <= 1:
        return RigidTransform(translation=(float(rng.uniform(-3, 3)), float(rng.uniform(-3, 3)), 0.0))
    return RigidTransform(
        rot_z_deg=float(rng.uniform(2.0, 4.0) * rng.choice([-1, 1])),
        rot_x_deg=float(rng.uniform(1.0, 2.5) * rng.choice([-1, 1])),
        translation=(float(rng.uniform(-12, 12)), float(rng.uniform(-8, 8)), float(rng.uniform(-15, 15))),
    )
