"""Solid lung nodules on CT, for lesions that take up no iodine (radioiodine-refractory candidates).

A classical pipeline, no training data:
1. Lungs: air (< -400 HU) inside the body, the two largest components, holes filled slice by slice
   so nodules and vessels surrounded by lung belong to it (juxtapleural nodules, not enclosed, are
   not searched: a known limit).
2. Candidates: maxima of the scale-normalised Laplacian of Gaussian, -sigma² LoG, over sigma = 1.5-5 mm
   (a solid sphere of radius r answers most at sigma = r / sqrt(3); Lindeberg, Int J Comput Vis
   1998;30:79), inside the lungs.
3. Vessel rejection by the Hessian at the candidate's scale: a blob has three negative eigenvalues of
   similar size, a vessel two and one near zero along its axis (the "dot" vs "line" filters of Li,
   Sone, Doi, Med Phys 2003;30:2040). Kept when |lambda_3| / |lambda_1| >= 0.5, midway between a tube (0)
   and a sphere (1).
4. Solid: a CT number >= -300 HU at the centre (the highest of its 27 neighbours: thick slices average a
   small nodule with lung) (soft-tissue density, not ground glass;
   the solid / subsolid distinction of the Fleischner Society, MacMahon et al., Radiology 2017;284:228),
   and a diameter, from the connected voxels above -400 HU (half-way between aerated lung and soft
   tissue) within 1.5 r, of at least `min_diameter_mm` (5 mm: the size from which nodules are followed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from node.quant.volume import Volume

LUNG_AIR_HU = -400.0
SOLID_CORE_HU = -300.0
EDGE_HU = -400.0
SIGMAS_MM = (1.5, 2.0, 2.75, 3.75, 5.0)
DOT_RATIO = 0.5
WORK_PIXEL_MM = 1.5  # finer CT is averaged down to this in-plane: enough for >= 5 mm nodules
MIN_LUNG_ML = 200.0
CLOSING_MM = 8.0
# A cheap candidate screen: a tenth of the contrast between a solid core and aerated lung (about -850 HU);
# the Hessian, density and size tests decide.
MIN_RESPONSE_HU = 0.1 * (SOLID_CORE_HU + 850.0)


@dataclass(frozen=True)
class CtNodule:
    centre_mm: tuple[float, float, float]  # LPS
    diameter_mm: float  # equivalent-sphere diameter of the solid part
    mean_hu: float
    dot_ratio: float
    response: float


def _lungs(hu: np.ndarray, voxel_ml: float, spacing_ji: tuple[float, float]) -> np.ndarray:
    tissue = hu > LUNG_AIR_HU
    lab, n = ndimage.label(tissue)
    if n == 0:
        return np.zeros_like(tissue)
    sizes = ndimage.sum_labels(tissue, lab, np.arange(1, n + 1))
    body = lab == int(np.argmax(sizes)) + 1
    body = np.stack([ndimage.binary_fill_holes(s) for s in body])
    air = body & ~tissue
    lab, n = ndimage.label(air)
    if n == 0:
        return np.zeros_like(air)
    sizes = ndimage.sum_labels(air, lab, np.arange(1, n + 1))
    keep = [i + 1 for i in np.argsort(sizes)[::-1][:2] if sizes[i] * voxel_ml >= MIN_LUNG_ML]
    lungs = np.isin(lab, keep)
    # Close over vessels and nodules that reach the lung's edge in a slice (a vessel running to the
    # hilum would otherwise open the "hole" a nodule on it sits in), then fill what is enclosed.
    r = [math.ceil(CLOSING_MM / s) for s in spacing_ji]
    disk = (np.ogrid[-r[0]:r[0] + 1, -r[1]:r[1] + 1][0] * spacing_ji[0]) ** 2 + (
        np.ogrid[-r[0]:r[0] + 1, -r[1]:r[1] + 1][1] * spacing_ji[1]) ** 2 <= CLOSING_MM**2
    closed = [ndimage.binary_closing(np.pad(s, r[0] + r[1]), structure=disk)[r[0] + r[1]:-(r[0] + r[1]),
                                                                             r[0] + r[1]:-(r[0] + r[1])]
              for s in lungs]
    return np.stack([ndimage.binary_fill_holes(s) for s in closed]) & body


def find_ct_nodules(ct: Volume, min_diameter_mm: float = 5.0) -> list[CtNodule]:
    """Solid lung nodules of at least `min_diameter_mm` (module docstring), largest response first."""
    # The lungs' extent first on a coarse copy (whole-body CT need not be held in float at full size).
    step = max(1, int(4.0 // ct.spacing[0]))
    coarse_sp = (ct.spacing[2], ct.spacing[1] * step, ct.spacing[0] * step)
    coarse = _lungs(ct.array[:, ::step, ::step].astype(np.float32), float(np.prod(coarse_sp)) / 1000.0,
                    coarse_sp[1:])
    if not coarse.any():
        return []
    cbox = ndimage.find_objects(coarse.astype(np.int8))[0]
    margin = [math.ceil(15.0 / s) for s in ct.spacing[::-1]]
    crop = tuple(slice(max(b.start * f - m, 0), min(b.stop * f + m, n))
                 for b, f, m, n in zip(cbox, (1, step, step), margin, ct.array.shape, strict=True))
    offset = np.array([c.start for c in crop], float)
    zoom = [1.0, min(1.0, ct.spacing[1] / WORK_PIXEL_MM), min(1.0, ct.spacing[0] / WORK_PIXEL_MM)]
    hu = ct.array[crop].astype(np.float32)
    if zoom[1] < 1 or zoom[2] < 1:
        hu = ndimage.zoom(hu, zoom, order=1)
    spacing_kji = (ct.spacing[2], ct.spacing[1] / zoom[1], ct.spacing[0] / zoom[2])
    voxel_ml = float(np.prod(spacing_kji)) / 1000.0
    lungs = _lungs(hu, voxel_ml, spacing_kji[1:])
    if not lungs.any():
        return []
    box = ndimage.find_objects(lungs.astype(np.int8))[0]
    pad = tuple(math.ceil(12.0 / s) for s in spacing_kji)
    box = tuple(slice(max(b.start - p, 0), min(b.stop + p, n)) for b, p, n in zip(box, pad, hu.shape, strict=True))
    sub = np.clip(hu[box], -1000.0, 200.0)
    mask = lungs[box]
    responses = []
    for sigma in SIGMAS_MM:
        responses.append(-sigma**2 * ndimage.gaussian_laplace(sub, _sigmas(sigma, spacing_kji)))
    stack = np.stack(responses)
    best = stack.max(axis=0)
    scale = stack.argmax(axis=0)
    del stack, responses
    peaks = (best == ndimage.maximum_filter(best, size=3)) & mask & (best > MIN_RESPONSE_HU)
    found: list[CtNodule] = []
    order = np.argwhere(peaks)
    order = order[np.argsort(-best[peaks], kind="stable")]
    taken: list[np.ndarray] = []
    for kji in order[:400]:
        sigma = SIGMAS_MM[int(scale[tuple(kji)])]
        r = sigma * math.sqrt(3)
        pos = kji * np.array(spacing_kji)
        if any(np.linalg.norm(pos - t) < r for t in taken):
            continue
        ratio = _dot_ratio(sub, kji, sigma, spacing_kji)
        if ratio < DOT_RATIO:
            continue
        near = tuple(slice(max(c - 1, 0), c + 2) for c in kji)
        core_hu = float(sub[near].max())
        if core_hu < SOLID_CORE_HU:
            continue
        core = _ball(sub.shape, kji, r / 2, spacing_kji)
        mean_hu = float(sub[core].mean()) if core.any() else core_hu
        diameter = _solid_diameter(sub, kji, 1.5 * r, spacing_kji)
        if diameter < min_diameter_mm:
            continue
        taken.append(pos)
        full = np.array([b.start for b in box]) + kji
        full_native = offset + full / np.array(zoom)
        centre = ct.index_to_lps(full_native[None, :].astype(float))[0]
        found.append(CtNodule(tuple(round(float(c), 2) for c in centre), round(diameter, 1), round(mean_hu, 1),
                              round(ratio, 3), float(best[tuple(kji)])))
    return found


def _sigmas(sigma_mm: float, spacing_kji: tuple[float, float, float]) -> list[float]:
    """Per-axis Gaussian sigma in voxels, at least 0.6 voxel: below that a thick slice (5 mm CT of a
    PET/CT) is not sampled finely enough for second derivatives."""
    return [max(sigma_mm / s, 0.6) for s in spacing_kji]


def _ball(shape: tuple[int, ...], centre: np.ndarray, radius_mm: float,
          spacing_kji: tuple[float, float, float]) -> np.ndarray:
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    d2 = sum(((g - c) * s) ** 2 for g, c, s in zip(grids, centre, spacing_kji, strict=True))
    return d2 <= radius_mm**2


def _dot_ratio(hu: np.ndarray, kji: np.ndarray, sigma_mm: float, spacing_kji: tuple[float, float, float]) -> float:
    """|smallest| / |largest| Hessian eigenvalue at the candidate (0 when not all negative)."""
    half = [math.ceil(4 * sigma_mm / s) + 2 for s in spacing_kji]
    box = tuple(slice(max(c - h, 0), min(c + h + 1, n)) for c, h, n in zip(kji, half, hu.shape, strict=True))
    local = hu[box]
    here = tuple(int(c - b.start) for c, b in zip(kji, box, strict=True))
    sig = _sigmas(sigma_mm, spacing_kji)
    h = np.zeros((3, 3))
    for a in range(3):
        for b in range(a, 3):
            order = [0, 0, 0]
            order[a] += 1
            order[b] += 1
            d = ndimage.gaussian_filter(local, sig, order=order)[here]
            h[a, b] = h[b, a] = d / (spacing_kji[a] * spacing_kji[b])
    ev = np.linalg.eigvalsh(h)
    if ev.max() >= 0:
        return 0.0
    mags = np.sort(np.abs(ev))
    return float(mags[0] / mags[-1])


def _solid_diameter(hu: np.ndarray, kji: np.ndarray, radius_mm: float,
                    spacing_kji: tuple[float, float, float]) -> float:
    """Equivalent-sphere diameter of the voxels above EDGE_HU connected to the centre within the ball."""
    half = [math.ceil(radius_mm / s) + 1 for s in spacing_kji]
    box = tuple(slice(max(c - h, 0), min(c + h + 1, n)) for c, h, n in zip(kji, half, hu.shape, strict=True))
    here = np.array([c - b.start for c, b in zip(kji, box, strict=True)])
    ball = _ball(tuple(b.stop - b.start for b in box), here, radius_mm, spacing_kji)
    solid = (hu[box] > EDGE_HU) & ball
    lab, _ = ndimage.label(solid)
    if lab[tuple(here)] == 0:
        return 0.0
    volume_mm3 = float((lab == lab[tuple(here)]).sum()) * float(np.prod(spacing_kji))
    return (6 * volume_mm3 / math.pi) ** (1 / 3)
