"""Predicted 131I lesion dose from serial 124I scans after one administration.

Method (shared/reference/iodine124.md; Jentzen et al., J Nucl Med 2008): the lesion's retention
r(t) = %IA decay-corrected to administration (124I physics removed); a mono-exponential fit
r(t) = r0 exp(-lambda_bio t) (with >= 3 points: least squares in log space); the 131I-equivalent
time-integrated activity per administered activity a~ = r0 / (lambda_bio + lambda_131) (hours);
absorbed dose per administered 131I activity with the local-deposition approximation
D [Gy] = 0.11066 x A~ [MBq h] / m [g] (0.19185 MeV non-penetrating energy per 131I decay).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

I131_HALF_LIFE_H = 8.0207 * 24  # ICRP-107 (iodine124.md)
LOCAL_DEPOSITION_GY_G_PER_MBQ_H = 0.11066  # 0.19185 MeV x 1.602e-13 J/MeV x 3.6e9 decays/(MBq h) / 1e-3 kg/g
TISSUE_DENSITY_G_PER_ML = 1.0


@dataclass(frozen=True)
class LesionDose:
    biological_half_life_h: float
    effective_half_life_131_h: float
    r0_fraction: float
    tia_h: float  # time-integrated activity per administered activity (MBq h / MBq)
    gy_per_gbq: float
    mass_g: float

    def dose_gy(self, activity_131_gbq: float) -> float:
        return self.gy_per_gbq * activity_131_gbq


def fit_retention(times_h: Sequence[float], percent_ia: Sequence[float]) -> tuple[float, float]:
    """(r0 as a fraction, lambda_bio per hour) of r(t) = r0 exp(-lambda t) through the points."""
    if len(times_h) < 2 or len(times_h) != len(percent_ia):
        raise ValueError("dosimetry needs at least two time points of one administration")
    if any(v <= 0 for v in percent_ia):
        raise ValueError("retention must be positive at every time point")
    t = [float(x) for x in times_h]
    y = [math.log(v / 100.0) for v in percent_ia]
    n = len(t)
    mt, my = sum(t) / n, sum(y) / n
    slope = sum((a - mt) * (b - my) for a, b in zip(t, y, strict=True)) / sum((a - mt) ** 2 for a in t)
    return math.exp(my - slope * mt), -slope


def lesion_dose(times_h: Sequence[float], percent_ia: Sequence[float], volume_ml: float,
                density_g_per_ml: float = TISSUE_DENSITY_G_PER_ML) -> LesionDose:
    r0, lam_bio = fit_retention(times_h, percent_ia)
    lam_131 = math.log(2) / I131_HALF_LIFE_H
    lam_eff = lam_bio + lam_131
    if lam_eff <= 0:
        raise ValueError("retention grows faster than 131I decays: no finite dose (check the time points)")
    tia_h = r0 / lam_eff
    mass_g = volume_ml * density_g_per_ml
    gy_per_gbq = LOCAL_DEPOSITION_GY_G_PER_MBQ_H * tia_h * 1000.0 / mass_g
    t_bio = math.log(2) / lam_bio if lam_bio > 0 else float("inf")
    return LesionDose(t_bio, math.log(2) / lam_eff, r0, tia_h, gy_per_gbq, mass_g)


def decay_correct_percent(percent_measured: float, t_h: float, half_life_124_h: float = 100.224) -> float:
    """%IA of physically decayed 124I -> decay-corrected to administration."""
    return percent_measured * math.exp(math.log(2) * t_h / half_life_124_h)
