"""Per-lesion measurements and labels (pure: arrays in, frozen dataclasses out).

Definitions:
- SUVpeak: highest mean SUV in a 1 cm³ sphere (radius 6.2 mm) centred on a lesion voxel (PERCIST,
  Wahl et al. J Nucl Med 2009;50:122S).
- Background: median SUV in a shell 10-25 mm outside the lesion, inside the body, excluding other
  foci; lesion-to-background ratio (DCM 126039) = SUVmax / background (DCM 126040).
- Activity: sum of activity concentration x voxel volume, at the images' reference time, and
  decay-corrected to administration; %IA = activity at administration / administered x 100.
- Recovered activity (for dosimetry): the delineated VOI loses the counts the scanner's blur
  spreads outside it (spill-out; 124I resolution ~6-8 mm FWHM, docs/science.md).
  Summing over the VOI enlarged by `margin_mm` (inside the body, without other foci) and removing
  the local background's share, A = sum_enlarged(C dV) - C_bg x (V_enlarged - V_lesion), recovers
  it without a scanner-specific recovery table (the enlarged-VOI method; Erdi et al., J Nucl Med
  1995;36:1287 for the background-corrected VOI sum). C_bg and V_lesion come from the blurred-sphere
  fit (node.quant.sphere) when it resolves the lesion, else the shell background and the VOI.
- Iodine-avid: LBR >= avid.lbr_threshold and SUVmax >= avid.reference_factor x the soft-tissue
  reference SUV (median SUV of body soft tissue), so a nodule that merely holds blood-pool
  activity inside aerated lung is not called avid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Annotated, ClassVar

import numpy as np
from annotated_types import Gt
from scipy import ndimage

from node.quant.detect import Focus
from node.quant.landmarks import Landmarks
from node.quant.models import Lesion, LesionLabel, PartialVolume, Site
from node.quant.sphere import SphereFit, fit_sphere
from node.quant.volume import Volume

PEAK_SPHERE_RADIUS_MM = (3 * 1000 / (4 * math.pi)) ** (1 / 3)  # 1 cm³ sphere: r = 6.2035 mm
BACKGROUND_SHELL_MM = (10.0, 25.0)
SPHERE_FIT_MARGIN_MM = 12.0  # the voxels the sphere fit sees: the lesion and its blurred edge
DEFAULT_ACTIVITY_MARGIN_MM = 10.0  # ~1.5 x the 124I effective FWHM: > 99 % of a Gaussian's spill


# Neck anatomy (Som et al., Arch Otolaryngol Head Neck Surg 1999;125:388 for the nodal levels): an adult
# submandibular gland is several ml and a parotid 15-30 ml, a cervical node below 15 mm under 2 ml.
SALIVARY_GLAND_MIN_ML = 3.0
# The thyroid lobes reach about 2-2.5 cm either side of the tracheal axis.
THYROID_BED_HALF_WIDTH_MM = 25.0
KIDNEY_MIN_ML = 15.0


@dataclass(frozen=True)
class AvidSettings:
    """`quantification.avid` in the configuration: when a lesion is called iodine-avid."""

    __pydantic_config__: ClassVar[dict[str, str]] = {"extra": "forbid"}  # a mistyped key fails (node.config)

    lbr_threshold: Annotated[float, Gt(0)] = 3.0
    reference_factor: Annotated[float, Gt(0)] = 2.0


@dataclass(frozen=True)
class ActivityScale:
    """SUV -> activity: conc [Bq/ml] = SUV x decayed_activity_bq / weight_g."""

    decayed_activity_bq: float
    injected_activity_bq: float
    weight_g: float
    half_life_s: float
    uptake_time_s: float | None


def peak_kernel(spacing_kji: tuple[float, float, float], radius_mm: float = PEAK_SPHERE_RADIUS_MM) -> np.ndarray:
    """Weights of each voxel's fraction inside a sphere (5^3 sub-samples), normalised to 1."""
    half = [int(np.ceil(radius_mm / s + 0.5)) for s in spacing_kji]
    sub = (np.arange(5) + 0.5) / 5 - 0.5
    kernel = np.zeros([2 * h + 1 for h in half])
    for idx in np.ndindex(kernel.shape):
        centre = [(i - h) * s for i, h, s in zip(idx, half, spacing_kji, strict=True)]
        zz, yy, xx = np.meshgrid(*[c + sub * s for c, s in zip(centre, spacing_kji, strict=True)], indexing="ij")
        kernel[idx] = np.mean(zz**2 + yy**2 + xx**2 <= radius_mm**2)
    return kernel / kernel.sum()


def _pad_box(mask_box: tuple[slice, ...], pad: tuple[int, ...], shape: tuple[int, ...]) -> tuple[slice, ...]:
    return tuple(slice(max(b.start - p, 0), min(b.stop + p, n)) for b, p, n in zip(mask_box, pad, shape, strict=True))


def report_rank(label: LesionLabel) -> int:
    """Reporting order: metastases, then the remnant, then physiological uptake."""
    return {LesionLabel.METASTASIS: 0, LesionLabel.REMNANT: 1}.get(label, 2)


def soft_tissue_reference(suv: np.ndarray, labels: np.ndarray, lm: Landmarks | None,
                          ct_hu: np.ndarray | None) -> float:
    """Median SUV of body soft tissue (CT -100..100 HU, outside lungs, bone and foci)."""
    if lm is not None and ct_hu is not None:
        sel = lm.body & ~lm.lungs & ~lm.bone & (labels == 0) & (ct_hu > -100) & (ct_hu < 100)
    else:
        sel = (suv > 0.05) & (labels == 0)
    values = suv[sel]
    return float(np.median(values)) if values.size else float("nan")


def classify(centroid: np.ndarray, volume_ml: float, mean_hu: float | None, elongation: float,
             lm: Landmarks | None, others: list[np.ndarray], in_lung: bool, in_bone: bool) -> tuple[LesionLabel, Site]:
    """(label, site) from anatomy: thyroid bed, salivary glands, stomach, bowel, kidneys, bladder."""
    x, y, z = (float(v) for v in centroid)
    if lm is None or lm.lung_apex_z is None or lm.lung_base_z is None:
        return LesionLabel.METASTASIS, Site.UNKNOWN
    apex, base, mid = lm.lung_apex_z, lm.lung_base_z, lm.midline_x
    dx = x - mid

    def partner(max_dz: float = 30.0, tol_x: float = 25.0) -> bool:
        return any(abs(float(o[0]) - mid + dx) < tol_x and abs(float(o[2]) - z) < max_dz and abs(float(o[0]) - x) > 20
                   for o in others)

    if z > apex + 70:  # head and upper neck
        # A salivary gland by position (lateral, above the lower neck) and size, not by symmetry: a
        # lone gland (the other destroyed by earlier 131I) is still a gland; a node is not.
        if abs(dx) > 20 and volume_ml >= SALIVARY_GLAND_MIN_ML and not in_bone:
            return LesionLabel.SALIVARY_GLAND, Site.HEAD_AND_NECK
        if abs(dx) < 15 and lm.trachea_xy is not None and y < lm.trachea_xy[1] - 30 and z > apex + 100:
            return LesionLabel.NASAL_MUCOSA, Site.HEAD
    if lm.trachea_xy is not None and apex - 10 < z < apex + 70 and not in_bone:
        tx, ty = lm.trachea_xy
        # The thyroid bed lies in front of and beside the trachea, bounded behind by the
        # tracheo-oesophageal grooves at the trachea's posterolateral margin; what lies beside or behind
        # the trachea's centre line is in the groove: a central-compartment (level VI) node.
        if abs(x - tx) < THYROID_BED_HALF_WIDTH_MM:
            return ((LesionLabel.REMNANT, Site.THYROID_BED) if y < ty
                    else (LesionLabel.METASTASIS, Site.NECK_LEVEL_VI))
    if z < base + 40 and not in_bone:  # abdomen and pelvis
        if z < base - 250 and abs(dx) < 50 and volume_ml > 30 and mean_hu is not None and -30 < mean_hu < 40:
            return LesionLabel.BLADDER, Site.PELVIS
        # A kidney: paired, or alone when the focus has an organ's size (a kidney is 100-200 ml; its pole
        # cut by the field of view still tens of ml): after a nephrectomy, or with the other one not focal.
        if (base - 160 < z < base - 20 and 45 < abs(dx) < 120 and y > lm.body_centre_y + 15
                and (partner(max_dz=60, tol_x=30) or volume_ml >= KIDNEY_MIN_ML)):
            return LesionLabel.KIDNEY, Site.RETROPERITONEUM
        # The stomach lies in the left upper abdomen, anterior (kidneys are posterior).
        if base - 150 < z and dx > 10 and y < lm.body_centre_y and volume_ml > 15 and (mean_hu is None
                                                                                       or mean_hu < 100):
            return LesionLabel.STOMACH, Site.UPPER_ABDOMEN
        if z < base - 40 and elongation >= 2.0 and volume_ml > 5:
            return LesionLabel.BOWEL, Site.ABDOMEN
    if in_bone:
        return LesionLabel.METASTASIS, Site.BONE
    if in_lung:
        return LesionLabel.METASTASIS, Site.LUNG
    if z > apex + 50 and abs(dx) > 20:
        return LesionLabel.METASTASIS, Site.NECK_LEVEL_II
    if z > apex:
        return LesionLabel.METASTASIS, Site.NECK
    if z > base:
        return LesionLabel.METASTASIS, Site.MEDIASTINUM
    return LesionLabel.METASTASIS, Site.ABDOMEN_PELVIS


def measure_lesions(suv_vol: Volume, labels: np.ndarray, foci: list[Focus], scale: ActivityScale,
                    lm: Landmarks | None, ct_hu: np.ndarray | None, avid: AvidSettings,
                    recovery: list[tuple[float, float]] | None = None,
                    margin_mm: float = DEFAULT_ACTIVITY_MARGIN_MM) -> tuple[list[Lesion], float]:
    """Measurements for every focus, and the soft-tissue reference SUV used for avidity."""
    suv = suv_vol.array
    spacing_kji = suv_vol.spacing[::-1]
    kernel = peak_kernel(spacing_kji)
    pad = tuple(int(np.ceil(max(BACKGROUND_SHELL_MM[1], margin_mm) / s)) + 1 for s in spacing_kji)
    reference = soft_tissue_reference(suv, labels, lm, ct_hu)
    boxes = ndimage.find_objects(labels)
    inside = lm.body if lm is not None else suv > 0.05
    centroids = {f.label: np.asarray(suv_vol.index_to_lps(np.argwhere(labels == f.label).mean(axis=0)))
                 for f in foci}
    lam = math.log(2) / scale.half_life_s
    out: list[Lesion] = []
    for focus in foci:
        box = _pad_box(boxes[focus.label - 1], pad, suv.shape)
        mask = labels[box] == focus.label
        values = suv[box][mask]
        n = int(mask.sum())
        volume_ml = n * suv_vol.voxel_ml
        peak_map = ndimage.correlate(suv[box].astype(np.float64), kernel, mode="nearest")
        dist = ndimage.distance_transform_edt(~mask, sampling=spacing_kji)
        shell = (dist >= BACKGROUND_SHELL_MM[0]) & (dist <= BACKGROUND_SHELL_MM[1]) & inside[box] & (labels[box] == 0)
        bg = float(np.median(suv[box][shell])) if shell.any() else focus.seed_background_suv
        suv_max, suv_mean = float(values.max()), float(values.mean())
        conc_sum = float(values.sum()) * scale.decayed_activity_bq / scale.weight_g  # Bq/ml summed
        activity_bq = conc_sum * suv_vol.voxel_ml
        to_admin = math.exp(lam * scale.uptake_time_s) if scale.uptake_time_s is not None else None
        at_admin = activity_bq * to_admin if to_admin is not None else None
        mean_hu = float(ct_hu[box][mask].mean()) if ct_hu is not None else None
        coords = np.argwhere(mask) * np.array(spacing_kji)
        if n >= 3:
            ev = np.sort(np.linalg.eigvalsh(np.cov(coords.T)))
            elongation = float(np.sqrt(ev[-1] / max(ev[-2], 1e-6)))
        else:
            elongation = 1.0
        # A lung nodule is soft tissue itself: "in the lung" means lung around it.
        in_lung = bool(lm is not None and shell.any() and lm.lungs[box][shell].mean() > 0.5)
        in_bone = bool(lm is not None and (mean_hu or 0) > 150) or bool(
            lm is not None and ndimage.binary_dilation(lm.bone[box])[mask].mean() > 0.5)
        centroid = centroids[focus.label]
        others = [c for label, c in centroids.items() if label != focus.label]
        label, site = classify(centroid, volume_ml, mean_hu, elongation, lm, others, in_lung, in_bone)
        sphere, recovered_bq = None, None
        if label.followed:  # followed over time: sized and dosed
            sphere, recovered_suv_ml = _sphere_and_recovered(suv_vol, box, mask, dist, labels, inside, centroid,
                                                             volume_ml, bg, margin_mm)
            recovered_bq = max(recovered_suv_ml * scale.decayed_activity_bq / scale.weight_g, activity_bq)
        lbr = suv_max / bg if bg > 0 else float("inf")
        avid_flag = bool(lbr >= avid.lbr_threshold and suv_max >= avid.reference_factor * reference)
        pvc = None
        if recovery:
            rc = recovery_coefficient(recovery, volume_ml)
            pvc = PartialVolume(recovery_coefficient=rc, suv_max=suv_max / rc, activity_mbq=activity_bq / 1e6 / rc)
        out.append(Lesion(
            id=0, label=label, site=site, centroid_mm=tuple(round(float(c), 2) for c in centroid),
            volume_ml=volume_ml, suv_max=suv_max, suv_peak=float(peak_map[mask].max()), suv_mean=suv_mean,
            total_lesion_uptake=suv_mean * volume_ml, activity_mbq=activity_bq / 1e6,
            activity_mbq_at_administration=at_admin / 1e6 if at_admin is not None else None,
            percent_injected_activity=(100.0 * at_admin / scale.injected_activity_bq if at_admin is not None
                                       else None),
            lesion_to_background=lbr, background_suv=bg, mean_hu=mean_hu,
            iodine_avid=avid_flag if label.followed else False, voxels=n,
            elongation=elongation, mask_label=focus.label, partial_volume=pvc,
            activity_recovered_mbq=recovered_bq / 1e6 if recovered_bq is not None else None, sphere=sphere,
            percent_injected_activity_recovered=(100.0 * recovered_bq * to_admin / scale.injected_activity_bq
                                                 if to_admin is not None and recovered_bq is not None else None),
        ))
    # Number lesions: metastases first (strongest first), then remnant, then physiological.
    ordered = sorted(out, key=lambda les: (report_rank(les.label), -les.suv_max))
    numbered = [replace(les, id=i + 1) for i, les in enumerate(ordered)]
    return numbered, reference


def _sphere_and_recovered(suv_vol: Volume, box: tuple[slice, ...], mask: np.ndarray, dist: np.ndarray,
                          labels: np.ndarray, inside: np.ndarray, centroid: np.ndarray, volume_ml: float,
                          shell_bg: float, margin_mm: float) -> tuple[SphereFit | None, float]:
    """(blurred-sphere fit, spill-out recovered SUV x ml) of one lesion (module docstring)."""
    suv = suv_vol.array[box]
    free = inside[box] & ((labels[box] == 0) | mask)
    near = (dist <= SPHERE_FIT_MARGIN_MM) & free
    sphere = fit_sphere(suv[near], suv_vol.index_to_lps(np.argwhere(near) + [b.start for b in box]), centroid,
                        (3 * volume_ml * 1000 / (4 * math.pi)) ** (1 / 3), float(suv[mask].max()), shell_bg)
    enlarged = (dist <= margin_mm) & free
    enlarged_ml = int(enlarged.sum()) * suv_vol.voxel_ml
    # The background under the enlarged VOI: the fitted local level and lesion volume when the sphere
    # fit resolved the lesion (closer than the 10-25 mm shell, e.g. inside a vertebra), else the shell's.
    if sphere is not None and sphere.resolved:
        bg, lesion_ml = sphere.background, sphere.volume_ml
    else:
        bg, lesion_ml = shell_bg, int(mask.sum()) * suv_vol.voxel_ml
    return sphere, float(suv[enlarged].sum()) * suv_vol.voxel_ml - bg * (enlarged_ml - lesion_ml)


def recovery_coefficient(table: list[tuple[float, float]], volume_ml: float) -> float:
    """RC at a volume by linear interpolation in log(volume) of the site's sphere table."""
    vols = np.log([v for v, _ in table])
    rcs = np.array([r for _, r in table])
    order = np.argsort(vols)
    return float(np.interp(np.log(max(volume_ml, 1e-6)), vols[order], rcs[order]))
