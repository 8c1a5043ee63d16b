"""Anatomical landmarks from CT on the PET grid: body, lungs, trachea, bone, midline.

They let the labelling rules speak anatomy ("at the level of the thyroid bed, in front of the
trachea") rather than scanner coordinates. Thresholds are standard CT numbers: air/lung below
-400 HU, bone above 200 HU (cortical and dense cancellous bone).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from node.quant.volume import Volume

LUNG_HU = -400.0
AIR_HU = -600.0
BONE_HU = 200.0
MIN_LUNG_ML = 200.0


@dataclass(frozen=True)
class Landmarks:
    body: np.ndarray  # bool, PET grid
    lungs: np.ndarray
    bone: np.ndarray
    lung_apex_z: float | None  # LPS z (mm) of the top and bottom of the lungs
    lung_base_z: float | None
    midline_x: float
    trachea_xy: tuple[float, float] | None
    body_centre_y: float


def _largest_components(mask: np.ndarray, min_voxels: int, keep: int) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if n == 0:
        return np.zeros_like(mask)
    sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))
    order = np.argsort(sizes)[::-1][:keep]
    chosen = [i + 1 for i in order if sizes[i] >= min_voxels]
    return np.isin(labels, chosen)


def voxel_lps(vol: Volume, mask: np.ndarray) -> np.ndarray:
    return vol.index_to_lps(np.argwhere(mask))


def find_landmarks(ct: Volume) -> Landmarks:
    """`ct`: CT numbers resampled onto the PET grid (outside the CT: -1000)."""
    hu = ct.array
    tissue = hu > LUNG_HU
    # Body: the largest solid component, holes (lungs, airways) filled slice by slice. No opening:
    # a thin chest wall would break at PET-grid resolution and let the lungs out.
    body = _largest_components(tissue, 1, 1)
    body = np.stack([ndimage.binary_fill_holes(s) for s in body])
    air_inside = body & (hu < LUNG_HU)
    lungs = _largest_components(air_inside, int(MIN_LUNG_ML / ct.voxel_ml), 2)
    bone = body & (hu > BONE_HU)
    xyz = voxel_lps(ct, body) if body.any() else np.zeros((1, 3))
    midline_x = float(np.median(xyz[:, 0]))
    centre_y = float(np.median(xyz[:, 1]))
    apex = base = None
    trachea = None
    if lungs.any():
        lz = voxel_lps(ct, lungs)[:, 2]
        apex, base = float(lz.max()), float(lz.min())
        # Trachea: the air column inside the body in the 60 mm above the lung apex, nearest the midline.
        all_z = ct.index_to_lps(np.stack([np.arange(hu.shape[0]), np.zeros(hu.shape[0]), np.zeros(hu.shape[0])],
                                         axis=1))[:, 2]
        neck = (all_z > apex) & (all_z < apex + 60)
        airway = np.zeros_like(body)
        airway[neck] = body[neck] & (hu[neck] < AIR_HU)
        if airway.any():
            labels, n = ndimage.label(airway)
            best, best_d = None, np.inf
            for i in range(1, n + 1):
                pts = voxel_lps(ct, labels == i)
                d = abs(float(np.mean(pts[:, 0])) - midline_x)
                if d < best_d:
                    best, best_d = pts, d
            if best is not None and best_d < 30:
                trachea = (float(np.mean(best[:, 0])), float(np.mean(best[:, 1])))
    return Landmarks(body, lungs, bone, apex, base, midline_x, trachea, centre_y)
