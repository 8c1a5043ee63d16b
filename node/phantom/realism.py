"""The realistic variant of the phantom (`--realistic`): anatomy and lesions that do not share the
quantification's assumptions.

What it adds over the classic body (node.phantom.anatomy), each per seed and deterministic:
- lesions that are not uniform spheres: lobulated ellipsoids (random semi-axes 0.75-1.25 x the
  radius, low-order surface lobulation) and, from 15 mm, a hypo-active core (necrosis) or an
  eccentric hot spot, so SUVmax is not at the centre and the profile is not a blurred top-hat;
- salivary glands as seen after earlier 131I: symmetric, asymmetric (one side at 25-60 %) or with
  one or both glands of a pair absent (a lone gland);
- cervical nodes at level II (bilateral, jugulodigastric, beside the submandibular glands) and level
  VI (paratracheal, next to the thyroid bed), levels after Som et al., Arch Otolaryngol Head Neck
  Surg 1999;125:388 (imaging-based nodal classification);
- a liver with smooth texture (multiplicative low-frequency field, +-20 %), a blood pool in the
  heart chambers and the great vessels (aorta, venae cavae), small-bowel loops with uneven uptake;
- pulmonary vessels (tubes from the hila, CT only: blood-pool activity), and solid lung nodules of
  5-12 mm that take up no iodine (kind `non-avid`: found only on CT), one of them touching a vessel.
Respiratory blur at the lung bases and the PET physics are in node.phantom.render.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from node.phantom.anatomy import (
    BACKGROUND,
    METASTASIS,
    NON_AVID,
    PHYSIOLOGICAL,
    Ellipsoid,
    Kinetics,
    PatientModel,
    Region,
    Shape,
    hash_name,
)

Array = np.ndarray


@dataclass(frozen=True)
class Lobulated:
    """An ellipsoid whose surface is modulated by low-order lobes: r_max(direction) = 1 + a sin(k phi + p) sin
    theta + b cos(2 theta) in the ellipsoid's normalised coordinates."""

    center: tuple[float, float, float]
    semi: tuple[float, float, float]
    lobe_amp: float = 0.0
    lobes: int = 3
    phase: float = 0.0
    polar_amp: float = 0.0

    def contains(self, x: Array, y: Array, z: Array) -> Array:
        u = (x - self.center[0]) / self.semi[0]
        v = (y - self.center[1]) / self.semi[1]
        w = (z - self.center[2]) / self.semi[2]
        r = np.sqrt(u * u + v * v + w * w)
        cos_t = np.divide(w, r, out=np.zeros_like(r), where=r > 0)
        sin_t = np.sqrt(np.clip(1.0 - cos_t**2, 0.0, 1.0))
        phi = np.arctan2(v, u)
        limit = 1.0 + self.lobe_amp * np.sin(self.lobes * phi + self.phase) * sin_t + self.polar_amp * (
            2 * cos_t**2 - 1)
        return r <= limit

    def bbox(self) -> tuple[Array, Array]:
        grow = 1.0 + abs(self.lobe_amp) + abs(self.polar_amp)
        c, s = np.array(self.center), np.array(self.semi) * grow
        return c - s, c + s


@dataclass(frozen=True)
class Capsule:
    """A tube of `radius` around the segment p0-p1 (vessels, bowel loops)."""

    p0: tuple[float, float, float]
    p1: tuple[float, float, float]
    radius: float

    def contains(self, x: Array, y: Array, z: Array) -> Array:
        a, b = np.array(self.p0), np.array(self.p1)
        d = b - a
        t = ((x - a[0]) * d[0] + (y - a[1]) * d[1] + (z - a[2]) * d[2]) / float(d @ d)
        t = np.clip(t, 0.0, 1.0)
        dx, dy, dz = x - (a[0] + t * d[0]), y - (a[1] + t * d[1]), z - (a[2] + t * d[2])
        return dx * dx + dy * dy + dz * dz <= self.radius**2

    def bbox(self) -> tuple[Array, Array]:
        a, b = np.array(self.p0), np.array(self.p1)
        return np.minimum(a, b) - self.radius, np.maximum(a, b) + self.radius


@dataclass(frozen=True)
class Textured:
    """Marks a region whose activity is modulated by a smooth multiplicative field (render applies it)."""

    base: Shape
    amplitude: float
    correlation_mm: float
    seed: int

    def contains(self, x: Array, y: Array, z: Array) -> Array:
        return self.base.contains(x, y, z)

    def bbox(self) -> tuple[Array, Array]:
        return self.base.bbox()


@dataclass(frozen=True)
class ExtraLesion:
    name: str
    kind: str
    site: str
    center: tuple[float, float, float]
    diameter_mm: float
    suv_24h: float
    hu: float


# Neck nodes by level (body coordinates: x left, y posterior, z superior; origin at the vertex):
# level II beside the submandibular glands, behind and lateral to them (jugulodigastric); level VI
# paratracheal, in the right tracheo-oesophageal groove below the thyroid bed. Plus CT-only lung nodules (no uptake).
EXTRA_LESIONS: tuple[ExtraLesion, ...] = (
    ExtraLesion("node_level_ii_r", METASTASIS, "lymph node (level II)", (-45.0, -5.0, -195.0), 11.0, 9.0, 45.0),
    ExtraLesion("node_level_ii_l", METASTASIS, "lymph node (level II)", (45.0, -5.0, -193.0), 10.0, 8.0, 45.0),
    ExtraLesion("node_level_vi", METASTASIS, "lymph node (level VI)", (-13.0, -6.0, -240.0), 9.0, 10.0, 45.0),
    ExtraLesion("ct_nodule_1", NON_AVID, "lung", (-70.0, 30.0, -350.0), 6.0, 0.3, 40.0),
    ExtraLesion("ct_nodule_2", NON_AVID, "lung", (75.0, 40.0, -360.0), 8.0, 0.3, 40.0),
    ExtraLesion("ct_nodule_3", NON_AVID, "lung", (60.0, 50.0, -440.0), 10.0, 0.3, 40.0),
    ExtraLesion("ct_nodule_4", NON_AVID, "lung", (-110.0, 25.0, -300.0), 5.0, 0.3, 40.0),
    # Abutting the vessel from the right hilum to (-100, -5, -390) (radius 3 mm): not jittered.
    ExtraLesion("ct_nodule_vessel", NON_AVID, "lung", (-55.0, 1.5, -396.0), 7.0, 0.3, 40.0),
)


def _vessels() -> list[Region]:
    """Pulmonary vessels: tubes fanning out from each hilum (CT 40 HU, blood-pool activity)."""
    out = []
    for side in (-1, 1):
        hilum = (30.0 * side, 5.0, -390.0)
        for i, (dx, dy, dz, r) in enumerate(((55, -30, 70, 3.0), (60, 25, 60, 2.5), (70, -10, 0, 3.0),
                                             (55, 35, -60, 2.5), (50, -25, -80, 3.0), (75, 10, -40, 2.0))):
            end = (hilum[0] + dx * side, hilum[1] + dy, hilum[2] + dz)
            out.append(Region(f"vessel_{'lr'[side > 0]}{i}", BACKGROUND, Capsule(hilum, end, r), 40, 1.0, "lung"))
    return out


def _lesion_shape(name: str, center: tuple[float, float, float], diameter_mm: float, seed: int) -> Lobulated:
    rng = np.random.default_rng([seed, 41, hash_name(name)])
    r = diameter_mm / 2.0
    semi = tuple(float(r * s) for s in rng.uniform(0.8, 1.2, size=3))
    scale = r / float(np.cbrt(np.prod(semi)))  # keep the equivalent-sphere diameter
    semi = tuple(s * scale for s in semi)
    return Lobulated(center, semi, lobe_amp=float(rng.uniform(0.05, 0.2)), lobes=int(rng.integers(2, 5)),
                     phase=float(rng.uniform(0, 2 * math.pi)), polar_amp=float(rng.uniform(-0.1, 0.1)))


def _heterogeneity(region: Region, seed: int) -> list[Region]:
    """A hypo-active core or an eccentric hot spot inside lesions >= 15 mm (painted after them)."""
    if region.diameter_mm is None or region.diameter_mm < 15 or region.center is None or region.suv is None:
        return []
    rng = np.random.default_rng([seed, 43, hash_name(region.name)])
    c = np.array(region.center)
    r = region.diameter_mm / 2
    if rng.random() < 0.5:
        core = Ellipsoid(tuple(c + rng.uniform(-0.15, 0.15, 3) * r), tuple(rng.uniform(0.3, 0.45, 3) * r))
        suv = region.suv * float(rng.uniform(0.2, 0.45))
        part = "necrotic core"
    else:
        core = Ellipsoid(tuple(c + rng.uniform(-0.4, 0.4, 3) * r), tuple(rng.uniform(0.25, 0.35, 3) * r))
        suv = region.suv * float(rng.uniform(1.3, 1.6))
        part = "hot spot"
    return [Region(f"{region.name}_{part.replace(' ', '_')}", region.kind, core, None, round(suv, 4),
                   site=f"{region.site} ({part})", report=False)]


def salivary_pattern(seed: int) -> dict[str, float]:
    """Uptake factor per salivary gland (0: absent) after earlier 131I, per seed."""
    rng = np.random.default_rng([seed, 47])
    names = ("parotid_r", "parotid_l", "submandibular_r", "submandibular_l")
    kind = rng.choice(["symmetric", "asymmetric", "lone", "absent_pair"], p=[0.25, 0.3, 0.25, 0.2])
    f = dict.fromkeys(names, 1.0)
    if kind == "asymmetric":
        f[str(rng.choice(names))] = float(rng.uniform(0.25, 0.6))
    elif kind == "lone":
        pair = ("parotid", "submandibular")[int(rng.integers(0, 2))]
        f[f"{pair}_{'rl'[int(rng.integers(0, 2))]}"] = 0.0
    elif kind == "absent_pair":
        f["submandibular_r"] = f["submandibular_l"] = 0.0
    return f


def make_realistic(model: PatientModel, seed: int, timepoint: int, uptake_h: float) -> PatientModel:
    """The classic body with the module docstring's changes."""
    glands = salivary_pattern(seed)
    regions: list[Region] = []
    lesions: list[Region] = []
    for region in model.regions:
        if region.name in glands:
            if glands[region.name] == 0.0:
                continue  # removed: its CT shows fat where the gland was
            region = replace(region, suv=round(region.suv * glands[region.name], 4))
        elif region.name == "liver":
            region = replace(region, shape=Textured(region.shape, 0.2, 25.0, seed))
        if region.kind in (METASTASIS, NON_AVID) and region.center is not None and region.diameter_mm:
            region = replace(region, shape=_lesion_shape(region.name, region.center, region.diameter_mm, seed))
            lesions.append(region)
            continue
        regions.append(region)
        if region.name == "heart":
            regions += _great_vessels()
    regions += _vessels() + _bowel_loops(seed)
    rng = np.random.default_rng([seed, 53])
    kinetics = dict(model.kinetics)
    for spec in EXTRA_LESIONS:
        jitter = rng.uniform(-3, 3, 3)
        center = tuple(float(v) for v in np.array(spec.center) + (0 if spec.name.endswith("vessel") else jitter))
        suv = spec.suv_24h
        if spec.kind == METASTASIS:
            kin = Kinetics(biological_half_life_h=float(rng.uniform(60.0, 200.0)))
            kinetics[spec.name] = kin
            suv *= float(rng.uniform(0.85, 1.2)) * kin.relative_retention(uptake_h)
        shape = _lesion_shape(spec.name, center, spec.diameter_mm, seed)
        lesions.append(Region(spec.name, spec.kind, shape, spec.hu, round(suv, 4), site=spec.site,
                              diameter_mm=spec.diameter_mm, center=center,
                              biological_half_life_h=kinetics[spec.name].biological_half_life_h
                              if spec.name in kinetics else None,
                              change=None if timepoint == 1 else "stable"))
    for lesion in lesions:
        regions.append(lesion)
        regions += _heterogeneity(lesion, seed)
    return PatientModel(tuple(regions), kinetics)


def _great_vessels() -> list[Region]:
    """Aorta (ascending, arch, descending) and venae cavae: blood pool beside the heart."""
    b, s = BACKGROUND, "blood pool"
    return [
        Region("aorta_ascending", b, Capsule((15, -25, -400), (5, -30, -330), 14), 40, 1.0, s),
        Region("aortic_arch", b, Capsule((5, -30, -330), (10, 20, -320), 12), 40, 1.0, s),
        Region("aorta_descending", b, Capsule((10, 20, -320), (15, 45, -620), 11), 40, 1.0, s),
        Region("vena_cava_superior", b, Capsule((-25, -20, -310), (-25, -20, -390), 10), 40, 1.0, s),
        Region("vena_cava_inferior", b, Capsule((-20, 20, -470), (-20, 30, -640), 11), 40, 1.0, s),
    ]


def _bowel_loops(seed: int) -> list[Region]:
    """Small-bowel loops in the mid abdomen: a chain of short tubes with uptake 1.5-6 (124I is secreted
    into the gut lumen), so bowel activity is patchy, tubular and not one smooth organ."""
    rng = np.random.default_rng([seed, 59])
    out = []
    p = np.array([-40.0, -40.0, -660.0])
    for i in range(10):
        step = rng.normal(0, 1, 3) * np.array([30.0, 12.0, 15.0])
        q = np.clip(p + step, [-100, -75, -760], [90, -5, -620])
        out.append(Region(f"small_bowel_{i}", PHYSIOLOGICAL, Capsule(tuple(p), tuple(q), float(rng.uniform(9, 13))),
                          10, round(float(rng.uniform(1.5, 6.0)), 3), "bowel"))
        p = q
    return out


def liver_texture(shape: Textured, xs: Array, ys: Array, zs: Array) -> Array:
    """The multiplicative field (mean 1) of a textured region on a grid of body coordinates."""
    # A sum of a few plane waves: smooth, deterministic, cheap to evaluate at any point.
    rng = np.random.default_rng([shape.seed, 61])
    field = np.zeros(np.broadcast(xs, ys, zs).shape, np.float32)
    for _ in range(6):
        k = rng.normal(0, 1, 3)
        k *= 2 * math.pi / shape.correlation_mm / np.linalg.norm(k)
        field += np.cos(k[0] * xs + k[1] * ys + k[2] * zs + rng.uniform(0, 2 * math.pi)).astype(np.float32)
    return 1.0 + shape.amplitude * field / math.sqrt(6 / 2)
