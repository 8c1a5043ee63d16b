"""Find and delineate iodine-avid foci in an SUV volume.

124I lesions are small (lung nodules of a few mm), numerous and of high contrast, seen through a
6-8 mm PSF. Candidates are local maxima standing out from their *local* background (the median
SUV in a spherical shell around them, robust to other hot spots in the shell); each is then
delineated by a configurable threshold and region growing from its maximum. Touching lesions
with separate maxima are split by a marker watershed on the SUV.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, ClassVar, Literal

import numpy as np
import SimpleITK as sitk
from annotated_types import Gt, Interval, Lt
from scipy import ndimage

from node.quant.significance import SignificanceTest
from node.quant.volume import Volume

Positive = Annotated[float, Gt(0)]


@dataclass(frozen=True)
class DetectionSettings:
    """`quantification.detection` in the configuration: which local maxima become foci."""

    __pydantic_config__: ClassVar[dict[str, str]] = {"extra": "forbid"}  # a mistyped key fails (node.config)

    min_peak_suv: Positive = 1.0  # maxima below this are not considered
    min_contrast: Positive = 3.0  # peak / local background
    min_delta_suv: Positive = 0.8  # peak - local background
    # peak / soft-tissue reference SUV: in aerated lung the local background is air, but a focus
    # must also stand above blood and soft tissue (the heart's blood pool is not a lesion)
    min_reference_ratio: Positive = 2.5
    background_shell_mm: tuple[Positive, Positive] = (15.0, 30.0)
    min_volume_ml: Positive = 0.05
    max_volume_ml: Positive = 1000.0  # larger regions are diffuse uptake, not a focus
    max_lesions: Annotated[int, Interval(ge=1, le=5000)] = 300
    split_touching: bool = True
    # Noise-aware decision: a focus must stand out from its surroundings in SUVpeak (the 1 cm³ sphere
    # mean, PERCIST) by more than the local noise allows, at a significance level that keeps the
    # expected number of noise foci per scan at this value (Bonferroni over the body's 1 ml cells).
    # 0 turns the test off (the contrast rules alone, as before).
    false_foci_per_scan: Annotated[float, Interval(ge=0, le=10)] = 0.1


@dataclass(frozen=True)
class SegmentationSettings:
    """`quantification.segmentation` in the configuration: how each focus is delineated."""

    __pydantic_config__: ClassVar[dict[str, str]] = {"extra": "forbid"}  # a mistyped key fails (node.config)

    # adaptive: background + percent x (max - background); percent_max: percent x max;
    # fixed_suv: SUV >= fixed_suv; jentzen: iterative, T% = a/V + b x bg/max + c
    # (Jentzen et al., J Nucl Med 2007;48:108-114; a, b, c must be calibrated per scanner).
    method: Literal["adaptive", "percent_max", "fixed_suv", "jentzen"] = "adaptive"
    # EANM tumour PET guideline iso-contour (Boellaard et al., EJNMMI 2015;42:328)
    percent: Annotated[float, Gt(0), Lt(100)] = 41.0
    fixed_suv: Positive = 2.5
    jentzen_a_ml_percent: float = 7.8
    jentzen_b_percent: float = 61.7
    jentzen_c_percent: float = 31.6
    max_radius_mm: Positive = 60.0


@dataclass(frozen=True)
class Focus:
    label: int
    seed: tuple[int, int, int]
    peak_suv: float
    seed_background_suv: float
    threshold_suv: float
    significance: float | None = None  # (SUVpeak - local median) / local noise of SUVpeak; None: not tested


def ball_offsets(spacing_kji: tuple[float, float, float], r_in: float, r_out: float) -> np.ndarray:
    """Integer (k, j, i) offsets whose centre distance lies in [r_in, r_out] mm."""
    radius = [int(np.ceil(r_out / s)) for s in spacing_kji]
    grids = np.meshgrid(*[np.arange(-r, r + 1) for r in radius], indexing="ij")
    dist = np.sqrt(sum((g * s) ** 2 for g, s in zip(grids, spacing_kji, strict=True)))
    keep = (dist >= r_in) & (dist <= r_out)
    return np.stack([g[keep] for g in grids], axis=1)


def _gather(arr: np.ndarray, centre: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    idx = offsets + centre
    ok = np.all((idx >= 0) & (idx < np.array(arr.shape)), axis=1)
    idx = idx[ok]
    return arr[idx[:, 0], idx[:, 1], idx[:, 2]]


def _box(shape: tuple[int, ...], centre: tuple[int, int, int], radius: tuple[int, int, int]) -> tuple[slice, ...]:
    return tuple(slice(max(c - r, 0), min(c + r + 1, n)) for c, r, n in zip(centre, radius, shape, strict=True))


def _grow(suv: np.ndarray, labels: np.ndarray, seed: tuple[int, int, int], threshold: float,
          radius_vox: tuple[int, int, int], max_doublings: int = 4) -> tuple[tuple[slice, ...], np.ndarray | None]:
    """Connected free voxels >= threshold around the seed, within a box that doubles while the
    region touches it; None when it still touches after `max_doublings` (diffuse, not focal)."""
    radius = radius_vox
    for attempt in range(max_doublings + 1):
        box = _box(suv.shape, seed, radius)
        local = (suv[box] >= threshold) & (labels[box] == 0)
        comp, _ = ndimage.label(local)
        here = tuple(s - b.start for s, b in zip(seed, box, strict=True))
        if comp[here] == 0:
            return box, np.zeros_like(local)
        region = comp == comp[here]
        touches = [
            (region.take(0, axis=a).any() and box[a].start > 0)
            or (region.take(-1, axis=a).any() and box[a].stop < suv.shape[a])
            for a in range(3)
        ]
        if not any(touches):
            return box, region
        if attempt == max_doublings:
            return box, None
        radius = tuple(r * 2 for r in radius)
    return box, None


def _threshold(method: SegmentationSettings, peak: float, bg: float, volume_ml: float | None) -> float:
    if method.method == "percent_max":
        return method.percent / 100.0 * peak
    if method.method == "fixed_suv":
        return method.fixed_suv
    if method.method == "jentzen" and volume_ml:
        t = (method.jentzen_a_ml_percent / volume_ml + method.jentzen_b_percent * bg / peak
             + method.jentzen_c_percent) / 100.0
        return min(max(t, 0.05), 0.95) * peak
    return bg + method.percent / 100.0 * (peak - bg)


def _region_background(suv: np.ndarray, inside: np.ndarray, labels: np.ndarray, box: tuple[slice, ...],
                       region: np.ndarray, spacing_kji: tuple[float, float, float],
                       shell_mm: tuple[float, float]) -> float | None:
    """Median SUV in a shell around the region (not around the seed: a large focus has its own
    voxels in any fixed shell around its maximum)."""
    pad = tuple(int(np.ceil(shell_mm[1] / s)) + 1 for s in spacing_kji)
    big = tuple(slice(max(b.start - p, 0), min(b.stop + p, n)) for b, p, n in zip(box, pad, suv.shape, strict=True))
    local = np.zeros([b.stop - b.start for b in big], bool)
    inner = tuple(slice(b.start - g.start, b.stop - g.start) for b, g in zip(box, big, strict=True))
    local[inner] = region
    dist = ndimage.distance_transform_edt(~local, sampling=spacing_kji)
    shell = (dist >= shell_mm[0]) & (dist <= shell_mm[1]) & inside[big] & (labels[big] == 0)
    values = suv[big][shell]
    return float(np.median(values)) if values.size >= 10 else None


def detect_foci(suv_vol: Volume, body: np.ndarray | None, det: DetectionSettings,
                seg: SegmentationSettings, reference_suv: float | None = None) -> tuple[np.ndarray, list[Focus]]:
    """Label volume (0 = none, n = focus n) and the foci, strongest first.

    For each local maximum (strongest first): grow a provisional region at half its height, take
    the background in a shell around that region, and keep it when it stands out (contrast and
    difference); then delineate it with the configured method. Regions that spread beyond the
    search radius are diffuse uptake, not foci; their maxima are not tried again."""
    suv = suv_vol.array
    spacing_kji = suv_vol.spacing[::-1]
    inside = body if body is not None else suv > 0.05
    floor = det.min_peak_suv
    if reference_suv is not None and np.isfinite(reference_suv):
        floor = max(floor, det.min_reference_ratio * reference_suv)
    peaks = (suv == ndimage.maximum_filter(suv, size=3)) & (suv >= floor) & inside
    seeds = np.argwhere(peaks)
    seeds = seeds[np.argsort(-suv[peaks], kind="stable")]
    near = ball_offsets(spacing_kji, 0.0, det.background_shell_mm[1])
    radius_vox = tuple(int(np.ceil(seg.max_radius_mm / s)) for s in spacing_kji)
    labels = np.zeros(suv.shape, np.int32)
    consumed = np.zeros(suv.shape, bool)
    foci: list[Focus] = []
    tester = SignificanceTest.build(suv_vol, inside, det, reference_suv) if det.false_foci_per_scan > 0 else None
    masked_suv = np.where(inside, suv, np.nan).astype(np.float32)
    for seed_arr in seeds:
        seed = (int(seed_arr[0]), int(seed_arr[1]), int(seed_arr[2]))
        if labels[seed] or consumed[seed]:
            continue
        peak = float(suv[seed])
        # Cheap screen: nothing around the maximum as low as the required background -> no focus.
        around = _gather(masked_suv, seed_arr, near)
        around = around[np.isfinite(around)]
        if around.size < 10 or float(np.min(around)) > peak / det.min_contrast:
            continue
        box, provisional = _grow(suv, labels, seed, 0.5 * peak, radius_vox, max_doublings=2)
        if provisional is None:
            consumed[box] |= suv[box] >= 0.5 * peak
            continue
        bg = _region_background(suv, inside, labels, box, provisional, spacing_kji, det.background_shell_mm)
        if bg is None or peak < det.min_contrast * max(bg, 1e-6) or peak - bg < det.min_delta_suv:
            consumed[box] |= provisional
            continue
        z = None
        if tester is not None:
            z = tester.focus_z(seed, labels, box, provisional)
            if z is None:
                consumed[box] |= provisional
                continue
        threshold = _threshold(seg, peak, bg, None)
        box, region = _grow(suv, labels, seed, threshold, radius_vox)
        if seg.method == "jentzen":
            for _ in range(10):
                vol_ml = float(region.sum()) * suv_vol.voxel_ml
                new_t = _threshold(seg, peak, bg, vol_ml)
                if abs(new_t - threshold) < 1e-3 * peak:
                    break
                threshold = new_t
                box, region = _grow(suv, labels, seed, threshold, radius_vox)
        if region is None or region.sum() * suv_vol.voxel_ml < det.min_volume_ml:
            consumed[seed] = True
            continue
        grown_ml = float(region.sum()) * suv_vol.voxel_ml
        if grown_ml > det.max_volume_ml or (grown_ml > 20.0
                                            and grown_ml > 4.0 * float(provisional.sum()) * suv_vol.voxel_ml):
            consumed[box] |= region  # the threshold fell below a neighbouring organ: diffuse, not focal
            continue
        n = len(foci) + 1
        labels[box][region] = n
        foci.append(Focus(n, seed, peak, bg, threshold, z))
        if len(foci) >= det.max_lesions:
            break
    if det.split_touching:
        smooth = ndimage.gaussian_filter(suv, sigma=1.0)  # saddles judged without noise bumps
        labels, foci = _split_touching(suv_vol, smooth, labels, foci, seeds, det, tester)
    return labels, foci


SPLIT_MIN_DISTANCE_MM = 12.0  # about two PSF widths apart
SPLIT_SADDLE_RATIO = 0.85  # the dip between them (smoothed), relative to the lower maximum


def _split_touching(suv_vol: Volume, smooth: np.ndarray, labels: np.ndarray, foci: list[Focus], seeds: np.ndarray,
                    det: DetectionSettings, tester: SignificanceTest | None = None) -> tuple[np.ndarray, list[Focus]]:
    """A region holding two distinct maxima (at least SPLIT_MIN_DISTANCE_MM apart, with the smoothed
    SUV between them dipping below SPLIT_SADDLE_RATIO of the lower one) is two lesions: split it
    by a marker watershed on the inverted SUV. Noise bumps on a large organ are not maxima of this kind."""
    raw = suv_vol.array
    suv = smooth
    spacing = np.array(suv_vol.spacing[::-1])
    out_labels = labels.copy()
    out: list[Focus] = []
    next_label = len(foci) + 1
    for focus in foci:
        members = [tuple(s) for s in seeds if labels[tuple(s)] == focus.label]
        strong = [m for m in members if raw[m] >= focus.threshold_suv]  # distinctness is judged below
        if len(strong) < 2:
            out.append(focus)
            continue
        region = labels == focus.label
        bbox = ndimage.find_objects(region.astype(np.int8))[0]
        local = region[bbox]
        markers = np.zeros(local.shape, np.uint32)
        kept = []
        for m in sorted(strong, key=lambda p: -raw[p]):
            rel = tuple(a - b.start for a, b in zip(m, bbox, strict=True))
            # Distinct only if the straight path to every kept maximum dips well below both peaks.
            distinct = True
            for other, _ in kept:
                if np.linalg.norm((np.array(rel) - np.array(other)) * spacing) < SPLIT_MIN_DISTANCE_MM:
                    distinct = False
                    break
                line = np.linspace(np.array(rel), np.array(other), 20).round().astype(int)
                saddle = float(suv[bbox][tuple(line.T)].min())
                if saddle > SPLIT_SADDLE_RATIO * min(suv[bbox][rel], suv[bbox][other]):
                    distinct = False
                    break
            if distinct:
                kept.append((rel, len(kept) + 1))
                markers[rel] = len(kept)
        if len(kept) < 2:
            out.append(focus)
            continue
        image = sitk.GetImageFromArray((-suv_vol.array[bbox]).astype(np.float32))
        ws = sitk.GetArrayFromImage(sitk.MorphologicalWatershedFromMarkers(
            image, sitk.GetImageFromArray(markers), markWatershedLine=False, fullyConnected=True))
        ws[~local] = 0
        for rel, idx in kept:
            part = ws == idx
            if not part.any():
                continue
            seed = tuple(a + b.start for a, b in zip(rel, bbox, strict=True))
            if idx != 1 and tester is not None and tester.seed_z(seed, out_labels) < tester.z_crit:
                continue  # a maximum the noise explains: its voxels stay with the first part
            lab = focus.label if idx == 1 else next_label
            if idx != 1:
                next_label += 1
            sub = out_labels[bbox]
            sub[part] = lab
            out.append(Focus(lab, seed, float(suv_vol.array[seed]), focus.seed_background_suv, focus.threshold_suv,
                             focus.significance))
    out.sort(key=lambda f: -f.peak_suv)
    return out_labels, out
