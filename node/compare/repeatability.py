"""How much of an SUVmax change between two scans is measurement error: per-lesion limits.

Model (log scale, one lesion, scans 1 and 2; docs/comparison.md#change-limits):

    var(ln SUVmax2 - ln SUVmax1) = 2 w^2 + sum_i (n_i^2 + s_i^2)

- w: the non-statistical within-subject variability of one scan (physiology, patient preparation,
  positioning, calibration drift). Test-retest of tumour SUV on the same scanner and protocol a few
  days apart gives a total within-subject CoV of ~12 % (Weber et al., J Nucl Med 2015;56:1137: 95 %
  repeatability coefficients of -28 % / +39 % for SUVpeak, i.e. SD of the log difference 0.168);
  of that, the statistical image noise of SUVmax alone is ~5.6 % (Lodge, Chaudhry, Wahl, J Nucl Med
  2012;53:1041, replicate images of the same acquisition). What remains, sqrt(0.119^2 - 0.056^2)
  = 0.105, is w. The statistical part is not taken from FDG: it is measured in each 124I scan.
- n_i: the statistical noise of SUVmax at scan i, measured around the lesion: in reconstructed PET
  the voxel variance grows about in proportion to the local mean (counting statistics), so the
  background shell gives k = SD / sqrt(mean) and the SD at the lesion's maximum is k sqrt(SUVmax).
  Count-poor (late, low-activity) scans and sub-centimetre lesions (low SUVmax from partial volume)
  thus get wider limits.
- s_i: voxel sampling of the maximum: the peak of a blurred lesion falls anywhere within a voxel, so
  the hottest voxel samples the peak at a random offset of up to half a voxel per axis. With the
  profile near the peak approximated by a Gaussian of variance sigma_psf^2 + R^2/5 (a sphere of
  radius R blurred by the PSF), the relative SD of the sampled maximum follows in closed form. It
  matters for lesions near the resolution (a few per cent at 2 cm, 10-20 % below 1 cm) and
  vanishes for large ones.

"Gained" / "reduced" need the change beyond z x SD (z = 1.96 for 95 %). With different uptake times
and no matched-uptake value, the change that washout alone can cause between the two uptake
times (biological half-life >= `min_biological_half_life_h`, an assumption stated as a setting) is
added to the limits, on the side it acts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
from annotated_types import Ge, Gt, Interval

from node.compare.matching import DEFAULT_GAINED, DEFAULT_REDUCED
from node.quant.volume import Volume

FIXED, REPEATABILITY = "fixed", "repeatability"
Z95 = 1.959964
# Weber et al. 2015 (total wCV 0.119 from the log RCs) minus Lodge et al. 2012 (noise 0.056).
DEFAULT_BIOLOGICAL_WCV = 0.105
DEFAULT_PSF_FWHM_MM = 7.0  # 124I effective resolution ~6-8 mm FWHM (positron range): used without a sphere fit
DEFAULT_VOXEL_MM = (4.0, 4.0, 4.0)
FWHM_PER_SIGMA = 2.354820


@dataclass(frozen=True)
class ChangeLimitSettings:
    """`comparison.change_limits` in the configuration: how a change of SUVmax is judged."""

    __pydantic_config__: ClassVar[dict[str, str]] = {"extra": "forbid"}  # a mistyped key fails (node.config)

    method: Literal["repeatability", "fixed"] = REPEATABILITY  # fixed: `gained` / `reduced` for every lesion
    biological_wcv: Annotated[float, Interval(ge=0, le=1)] = DEFAULT_BIOLOGICAL_WCV  # test-retest CoV per scan
    confidence_z: Annotated[float, Gt(0)] = Z95
    # Used only when a scan's image is not at hand (e.g. a prior's results alone): CoV at soft tissue.
    fallback_noise_cov: Annotated[float, Gt(0)] = 0.20
    uptake_time_tolerance: Annotated[float, Ge(0)] = 0.10  # relative difference of uptake times that is warned about
    min_biological_half_life_h: Annotated[float, Gt(0)] = 48.0  # washout allowance for unmatched uptake times


@dataclass(frozen=True)
class ChangeLimits(ChangeLimitSettings):
    """Which change of SUVmax counts as gained / reduced: the settings with the comparison's fixed
    relative thresholds (`comparison.gained` / `reduced`)."""

    gained: float = DEFAULT_GAINED
    reduced: float = DEFAULT_REDUCED

    def describe(self) -> dict[str, Any]:
        if self.method == FIXED:
            return {"method": FIXED, "gained": self.gained, "reduced": self.reduced}
        return {"method": REPEATABILITY, "biological_wcv": self.biological_wcv, "z": self.confidence_z,
                "model": "var(ln ratio) = 2 w^2 + noise_1^2 + noise_2^2 + sampling_1^2 + sampling_2^2",
                "sources": "w: Weber et al. J Nucl Med 2015;56:1137 less the noise part of Lodge et al. "
                           "J Nucl Med 2012;53:1041; noise measured per lesion in each scan",
                "min_biological_half_life_h": self.min_biological_half_life_h}


@dataclass(frozen=True)
class LesionNoise:
    """Relative (log-scale) SDs of one lesion's SUVmax at one scan."""

    statistical: float
    sampling: float
    source: str  # "image" (measured around the lesion) or "assumed (no image)"

    @property
    def total(self) -> float:
        return math.hypot(self.statistical, self.sampling)


def noise_constant(vol: Volume, centre_mm: Sequence[float], radius_mm: float) -> float | None:
    """k = SD / sqrt(mean) of the SUV in a shell 10-25 mm outside the lesion (robust: median and MAD,
    so neighbouring foci and edges of organs count little); None where the shell holds no tissue."""
    inner, outer = radius_mm + 10.0, radius_mm + 25.0
    centre = vol.lps_to_index(np.asarray(centre_mm, float))
    half = [math.ceil(outer / s) + 1 for s in vol.spacing[::-1]]
    lo = [max(round(c) - h, 0) for c, h in zip(centre, half, strict=True)]
    hi = [min(round(c) + h + 1, n) for c, h, n in zip(centre, half, vol.array.shape, strict=True)]
    if any(b <= a for a, b in zip(lo, hi, strict=True)):
        return None
    block = vol.array[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]].astype(float)
    kk, jj, ii = np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi, strict=True)], indexing="ij")
    pts = vol.index_to_lps(np.stack([kk.ravel(), jj.ravel(), ii.ravel()], axis=1))
    dist = np.linalg.norm(pts - np.asarray(centre_mm, float), axis=1).reshape(block.shape)
    values = block[(dist >= inner) & (dist <= outer)]
    if values.size < 20:
        return None
    median = float(np.median(values))
    if median <= 0:
        return None
    mad_sd = 1.4826 * float(np.median(np.abs(values - median)))
    return mad_sd / math.sqrt(median) if mad_sd > 0 else None


def sampling_sd(radius_mm: float, fwhm_mm: float, voxel_mm: Sequence[float]) -> float:
    """Relative SD of the hottest voxel's value when the peak lies at a uniformly random offset
    within a voxel (nearest voxel centre): E[exp(-a u^2)] over u ~ U(-d/2, d/2) per axis, in closed
    form with erf, a = 1 / (2 (sigma_psf^2 + R^2 / 5))."""
    var = (fwhm_mm / FWHM_PER_SIGMA) ** 2 + radius_mm**2 / 5.0
    a = 1.0 / (2.0 * var)

    def mean_exp(coef: float, d: float) -> float:
        half = d / 2.0
        return math.sqrt(math.pi / coef) * math.erf(math.sqrt(coef) * half) / d if d > 0 else 1.0

    m1 = math.prod(mean_exp(a, d) for d in voxel_mm)
    m2 = math.prod(mean_exp(2 * a, d) for d in voxel_mm)
    return math.sqrt(max(m2 / (m1 * m1) - 1.0, 0.0))


def lesion_size_mm(lesion: dict[str, Any]) -> tuple[float, float]:
    """(radius, PSF FWHM) in mm: the blurred-sphere fit's when present, else the delineated volume's
    equivalent sphere and the default 124I resolution; a CT-found lesion's CT diameter first."""
    fit = lesion.get("sphere_fit") or {}
    fwhm = float(fit.get("fwhm_mm") or DEFAULT_PSF_FWHM_MM)
    if lesion.get("ct_diameter_mm"):
        return float(lesion["ct_diameter_mm"]) / 2.0, fwhm
    if fit.get("diameter_mm"):
        return float(fit["diameter_mm"]) / 2.0, fwhm
    return float((3.0 * float(lesion["volume_ml"]) * 1000.0 / (4.0 * math.pi)) ** (1 / 3)), fwhm


def lesion_noise(lesion: dict[str, Any], vol: Volume | None, voxel_mm: Sequence[float] | None,
                 soft_tissue_suv: float | None, limits: ChangeLimits) -> LesionNoise:
    """The lesion's statistical and sampling SDs of ln SUVmax at one scan."""
    radius, fwhm = lesion_size_mm(lesion)
    suv_max = max(float(lesion["suv_max"]), 1e-6)
    k = noise_constant(vol, lesion["centroid_mm"], radius) if vol is not None else None
    source = "image"
    if k is None:
        reference = soft_tissue_suv if soft_tissue_suv and soft_tissue_suv > 0 else 1.0
        k, source = limits.fallback_noise_cov * math.sqrt(reference), "assumed (no image)"
    voxels = tuple(vol.spacing) if vol is not None else tuple(voxel_mm or DEFAULT_VOXEL_MM)
    return LesionNoise(k / math.sqrt(suv_max), sampling_sd(radius, fwhm, voxels), source)


def washout_allowance(t_from_h: float | None, t_to_h: float | None, limits: ChangeLimits) -> tuple[float, float]:
    """(low, high) of ln(SUV_to / SUV_from) that washout alone can cause between the uptake times:
    r(t) ~ exp(-lambda t) with 0 <= lambda <= ln 2 / T_min; (0, 0) when the times match within the
    tolerance or are unknown."""
    if t_from_h is None or t_to_h is None or not uptake_times_differ(t_from_h, t_to_h, limits.uptake_time_tolerance):
        return 0.0, 0.0
    shift = -math.log(2) * (t_to_h - t_from_h) / limits.min_biological_half_life_h
    return min(shift, 0.0), max(shift, 0.0)


def uptake_times_differ(t1_h: float, t2_h: float, tolerance: float) -> bool:
    """More than `tolerance` apart, relative to the shorter uptake time."""
    return abs(t1_h - t2_h) > tolerance * min(t1_h, t2_h)


@dataclass(frozen=True)
class ChangeVerdict:
    """One lesion's change from the lower- to the higher-TSH scan against its limits."""

    relative_change: float
    limits: tuple[float, float]  # relative change below / above which it counts
    ci95: tuple[float, float] | None  # of the relative change (repeatability method)
    verdict: str  # "gained", "reduced" or "stable"


def judge_change(suv_from: float, suv_to: float, noise_from: LesionNoise | None, noise_to: LesionNoise | None,
                limits: ChangeLimits, allowance: tuple[float, float] = (0.0, 0.0)) -> ChangeVerdict:
    """Gained / reduced / stable between two SUVmax values with the lesion's own limits."""
    if suv_from <= 0:
        return ChangeVerdict(math.inf, (limits.reduced, limits.gained), None, "gained")
    ratio = suv_to / suv_from
    if limits.method == FIXED or noise_from is None or noise_to is None:
        lo, hi = limits.reduced, limits.gained
        lo_log, hi_log = math.log1p(lo) + allowance[0], math.log1p(hi) + allowance[1]
        ci = None
    else:
        sd = math.sqrt(2 * limits.biological_wcv**2 + noise_from.total**2 + noise_to.total**2)
        lo_log, hi_log = -limits.confidence_z * sd + allowance[0], limits.confidence_z * sd + allowance[1]
        ln_ratio = math.log(ratio) if ratio > 0 else -math.inf
        ci = (math.expm1(ln_ratio - limits.confidence_z * sd), math.expm1(ln_ratio + limits.confidence_z * sd))
    ln_ratio = math.log(ratio) if ratio > 0 else -math.inf
    verdict = "gained" if ln_ratio > hi_log else ("reduced" if ln_ratio < lo_log else "stable")
    return ChangeVerdict(ratio - 1.0, (math.expm1(lo_log), math.expm1(hi_log)), ci, verdict)
