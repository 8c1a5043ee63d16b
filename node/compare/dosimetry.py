"""Predicted 131I lesion dose from serial 124I scans after one administration.

Method (docs/science.md; Jentzen et al., J Nucl Med 2008;49:1017): the lesion's
retention r(t) = %IA decay-corrected to administration (124I physics removed); the 131I-equivalent
time-integrated activity per administered activity a~ = integral r(t) exp(-lambda_131 t) dt (hours);
absorbed dose per administered 131I activity D/A0 = a~ x S, with S from the local-deposition
approximation D [Gy] = 0.11066 x A~ [MBq h] / m [g] (0.19185 MeV non-penetrating energy per 131I
decay) by default, or from a configured sphere S-value table (mass -> Gy per MBq h, e.g. OLINDA/EXM
or IDAC-Dose spheres), interpolated in log-log.

Retention models:
- two points, or more without an early rise: mono-exponential r(t) = r0 exp(-lambda_bio t)
  (least squares in log space), integrated from the administration (instantaneous uptake; this
  overestimates a~ by about lambda_eff / (lambda_uptake + lambda_eff), a few per cent for an
  uptake half-time of hours, the known bias of the 24 h + 96 h protocol);
- three or more points where the earliest lies on the rising part: uptake + washout
  r(t) = a (exp(-lambda_w t) - exp(-lambda_u t)), lambda_u > lambda_w (non-linear least squares),
  a~ = a (1 / (lambda_w + lambda_131) - 1 / (lambda_u + lambda_131)).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit

I124_HALF_LIFE_H = 100.224  # ICRP-107 (iodine124.md)
I131_HALF_LIFE_H = 8.0207 * 24  # ICRP-107 (iodine124.md)
LOCAL_DEPOSITION_GY_G_PER_MBQ_H = 0.11066  # 0.19185 MeV x 1.602e-13 J/MeV x 3.6e9 decays/(MBq h) / 1e-3 kg/g
TISSUE_DENSITY_G_PER_ML = 1.0
MONO, UPTAKE_WASHOUT = "mono-exponential", "uptake + washout"


@dataclass(frozen=True)
class Retention:
    """r(t) = a (exp(-lambda_w t) - exp(-lambda_u t)); lambda_u = inf is the mono-exponential."""

    model: str
    a_fraction: float
    washout_per_h: float
    uptake_per_h: float = math.inf

    def at(self, t_h: float) -> float:
        rise = 0.0 if math.isinf(self.uptake_per_h) else math.exp(-self.uptake_per_h * t_h)
        return self.a_fraction * (math.exp(-self.washout_per_h * t_h) - rise)

    def integral_131_h(self) -> float:
        """a~: integral of r(t) exp(-lambda_131 t) from 0 to infinity, in hours."""
        lam_131 = math.log(2) / I131_HALF_LIFE_H
        if self.washout_per_h + lam_131 <= 0:
            raise ValueError("retention grows faster than 131I decays: no finite dose (check the time points)")
        late = 0.0 if math.isinf(self.uptake_per_h) else 1.0 / (self.uptake_per_h + lam_131)
        return self.a_fraction * (1.0 / (self.washout_per_h + lam_131) - late)


@dataclass(frozen=True)
class LesionDose:
    model: str
    biological_half_life_h: float
    effective_half_life_131_h: float
    r0_fraction: float
    tia_h: float  # time-integrated activity per administered activity (MBq h / MBq)
    gy_per_gbq: float
    mass_g: float
    s_value_source: str

    def dose_gy(self, activity_131_gbq: float) -> float:
        return self.gy_per_gbq * activity_131_gbq


def _check(times_h: Sequence[float], percent_ia: Sequence[float]) -> None:
    if len(times_h) < 2 or len(times_h) != len(percent_ia):
        raise ValueError("dosimetry needs at least two time points of one administration")
    if len(set(times_h)) != len(times_h):
        raise ValueError(f"two scans at the same time after administration: {sorted(times_h)} h")
    if any(v <= 0 for v in percent_ia):
        raise ValueError("retention must be positive at every time point")


def fit_retention(times_h: Sequence[float], percent_ia: Sequence[float]) -> tuple[float, float]:
    """(r0 as a fraction, lambda_bio per hour) of r(t) = r0 exp(-lambda t) through the points."""
    _check(times_h, percent_ia)
    t = [float(x) for x in times_h]
    y = [math.log(v / 100.0) for v in percent_ia]
    n = len(t)
    mt, my = sum(t) / n, sum(y) / n
    slope = sum((a - mt) * (b - my) for a, b in zip(t, y, strict=True)) / sum((a - mt) ** 2 for a in t)
    return math.exp(my - slope * mt), -slope


def fit_uptake_washout(times_h: Sequence[float], percent_ia: Sequence[float]) -> Retention | None:
    """The uptake + washout model through >= 3 points, or None when the data show no rise (the
    earliest point is not below the mono-exponential through the later ones) or the fit fails."""
    _check(times_h, percent_ia)
    order = np.argsort(times_h)
    t = np.asarray(times_h, float)[order]
    r = np.asarray(percent_ia, float)[order] / 100.0
    if len(t) < 3:
        return None
    r0_late, lam_late = fit_retention(t[1:], r[1:] * 100.0)
    if r[0] >= r0_late * math.exp(-lam_late * t[0]) * 0.99:
        return None  # no measurable uptake phase: instantaneous uptake is the better model

    def model(tt: np.ndarray, log_a: float, lam_w: float, log_du: float) -> np.ndarray:
        return np.exp(log_a) * (np.exp(-lam_w * tt) - np.exp(-(lam_w + np.exp(log_du)) * tt))

    guess = (math.log(r0_late), max(lam_late, 1e-4), math.log(math.log(2) / max(t[0] / 2, 0.5)))
    try:
        with warnings.catch_warnings():  # three points, three parameters: no covariance, expected
            warnings.simplefilter("ignore", OptimizeWarning)
            params, _ = curve_fit(model, t, r, p0=guess, sigma=r, maxfev=20000)  # relative errors
    except (RuntimeError, ValueError):
        return None
    log_a, lam_w, log_du = (float(p) for p in params)
    if not all(math.isfinite(p) for p in params):
        return None
    return Retention(UPTAKE_WASHOUT, math.exp(log_a), lam_w, lam_w + math.exp(log_du))


def s_value_gy_per_mbq_h(mass_g: float, table: Sequence[tuple[float, float]] | None) -> tuple[float, str]:
    """(S in Gy per MBq h, where it comes from) for a sphere of `mass_g`."""
    if not table:
        return LOCAL_DEPOSITION_GY_G_PER_MBQ_H / mass_g, "local deposition (0.11066 Gy g / MBq h)"
    points = sorted(table)
    masses = np.log([m for m, _ in points])
    s = np.log([v for _, v in points])
    x = math.log(mass_g)
    if len(points) == 1:
        return float(math.exp(s[0]) * points[0][0] / mass_g), "sphere S-value table (1 point, scaled 1/m)"
    # Log-log interpolation; outside the table, extrapolated along the nearest segment.
    i = int(np.clip(np.searchsorted(masses, x) - 1, 0, len(points) - 2))
    slope = (s[i + 1] - s[i]) / (masses[i + 1] - masses[i])
    return float(math.exp(s[i] + slope * (x - masses[i]))), "sphere S-value table"


def lesion_dose(times_h: Sequence[float], percent_ia: Sequence[float], volume_ml: float,
                density_g_per_ml: float = TISSUE_DENSITY_G_PER_ML,
                s_table: Sequence[tuple[float, float]] | None = None) -> LesionDose:
    retention = fit_uptake_washout(times_h, percent_ia) if len(times_h) >= 3 else None
    if retention is None:
        r0, lam_bio = fit_retention(times_h, percent_ia)
        retention = Retention(MONO, r0, lam_bio)
    lam_131 = math.log(2) / I131_HALF_LIFE_H
    tia_h = retention.integral_131_h()
    mass_g = volume_ml * density_g_per_ml
    s, source = s_value_gy_per_mbq_h(mass_g, s_table)
    gy_per_gbq = s * tia_h * 1000.0
    lam_w = retention.washout_per_h
    t_bio = math.log(2) / lam_w if lam_w > 0 else float("inf")
    return LesionDose(retention.model, t_bio, math.log(2) / (lam_w + lam_131), retention.a_fraction, tia_h,
                      gy_per_gbq, mass_g, source)


def decay_correct_percent(percent_measured: float, t_h: float, half_life_124_h: float = I124_HALF_LIFE_H) -> float:
    """%IA of physically decayed 124I -> decay-corrected to administration."""
    return percent_measured * math.exp(math.log(2) * t_h / half_life_124_h)
