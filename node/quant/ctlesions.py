"""CT-found nodules as lesions: measured on PET at their site, reported as `non-avid (CT)`.

A nodule already covered by a PET focus is that focus (the PET lesion stands); any other is a lesion
with `detection: "ct"`, label metastasis, not iodine-avid, its CT diameter, and PET values in a sphere
of that diameter (at least the voxel holding its centre): SUVmax, SUVmean, SUVpeak, background (median
SUV 10-25 mm outside, body, not other foci) and lesion-to-background ratio. Its sphere is added to the
label volume, so the SEG shows it. The cross-team contract: results.json `detection`, `ct_diameter_mm`.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
from scipy import ndimage

from node.quant.ctnodules import CtNodule
from node.quant.landmarks import Landmarks
from node.quant.measure import BACKGROUND_SHELL_MM, ActivityScale, peak_kernel, report_rank
from node.quant.models import Detection, Lesion, LesionLabel, Site
from node.quant.volume import Volume

OVERLAP_MARGIN_MM = 5.0  # a PET focus this close to the nodule's edge is the nodule seen on PET


def add_ct_lesions(suv_vol: Volume, labels: np.ndarray, lesions: list[Lesion], nodules: list[CtNodule],
                   scale: ActivityScale, lm: Landmarks | None) -> tuple[np.ndarray, list[Lesion]]:
    """(label volume with the CT lesions' spheres, all lesions renumbered: metastases by SUVmax first)."""
    suv = suv_vol.array
    spacing = suv_vol.spacing[::-1]
    grids = None
    labels = labels.copy()
    next_label = int(labels.max()) + 1
    kernel = peak_kernel(spacing)
    inside = lm.body if lm is not None else suv > 0.05
    lam = math.log(2) / scale.half_life_s
    out = list(lesions)
    for nod in nodules:
        kji = suv_vol.lps_to_index(np.asarray(nod.centre_mm, float))
        centre = np.round(kji).astype(int)
        if np.any(centre < 0) or np.any(centre >= np.array(suv.shape)):
            continue
        if grids is None:
            grids = np.ogrid[tuple(slice(0, n) for n in suv.shape)]
        d2 = sum(((g - c) * s) ** 2 for g, c, s in zip(grids, kji, spacing, strict=True))
        r = nod.diameter_mm / 2
        covering = labels[d2 <= (r + OVERLAP_MARGIN_MM) ** 2]
        if (covering > 0).any():
            # The nodule seen on PET: its CT diameter is the best size of that lesion (partial volume).
            hit = int(np.bincount(covering[covering > 0]).argmax())
            out = [replace(les, ct_diameter_mm=nod.diameter_mm)
                   if les.mask_label == hit and les.label is LesionLabel.METASTASIS and les.ct_diameter_mm is None
                   else les
                   for les in out]
            continue
        mask = d2 <= r**2
        mask[tuple(centre)] = True
        shell = (d2 >= (r + BACKGROUND_SHELL_MM[0]) ** 2) & (d2 <= (r + BACKGROUND_SHELL_MM[1]) ** 2) & inside & (
            labels == 0)
        values = suv[mask]
        bg = float(np.median(suv[shell])) if shell.any() else float("nan")
        box = tuple(slice(max(c - 3, 0), c + 4) for c in centre)
        peak = float(ndimage.correlate(suv[box].astype(np.float64), kernel, mode="nearest")[
            tuple(c - b.start for c, b in zip(centre, box, strict=True))])
        suv_max, suv_mean = float(values.max()), float(values.mean())
        volume_ml = math.pi / 6 * nod.diameter_mm**3 / 1000
        activity_bq = suv_mean * volume_ml * scale.decayed_activity_bq / scale.weight_g
        to_admin = math.exp(lam * scale.uptake_time_s) if scale.uptake_time_s is not None else None
        labels[mask & (labels == 0)] = next_label
        out.append(Lesion(
            id=0, label=LesionLabel.METASTASIS, site=Site.LUNG,
            centroid_mm=tuple(round(float(v), 2) for v in nod.centre_mm),
            volume_ml=volume_ml, suv_max=suv_max, suv_peak=peak, suv_mean=suv_mean,
            total_lesion_uptake=suv_mean * volume_ml, activity_mbq=activity_bq / 1e6,
            activity_mbq_at_administration=activity_bq * to_admin / 1e6 if to_admin else None,
            percent_injected_activity=(100 * activity_bq * to_admin / scale.injected_activity_bq if to_admin
                                       else None),
            lesion_to_background=suv_max / bg if bg > 0 else float("inf"), background_suv=bg,
            mean_hu=nod.mean_hu, iodine_avid=False, voxels=int(mask.sum()), elongation=1.0,
            mask_label=next_label, detection=Detection.CT, ct_diameter_mm=nod.diameter_mm))
        next_label += 1
    ordered = sorted(out, key=lambda les: (report_rank(les.label), les.found_on_ct, -les.suv_max))
    return labels, [replace(les, id=i + 1) for i, les in enumerate(ordered)]
