"""Where to put a lesion on one PET image: the voxel of its SUVmax.

Image-based viewers (OHIF/Cornerstone) draw TID 1500 measurements only when they carry image
coordinates (a TID 1410 planar ROI: an SCOORD on a referenced image); a volumetric group that
references a SEG segment is not drawn.
"""

from __future__ import annotations

import numpy as np


def suvmax_voxel(suv: np.ndarray, mask: np.ndarray) -> tuple[int, int, int]:
    """(k, j, i) of the highest SUV inside the mask (the first one on ties)."""
    if not mask.any():
        raise ValueError("empty lesion mask: no voxel to place the planar ROI on")
    flat = np.where(mask, suv, -np.inf)
    k, j, i = np.unravel_index(int(np.argmax(flat)), suv.shape)
    return int(k), int(j), int(i)
