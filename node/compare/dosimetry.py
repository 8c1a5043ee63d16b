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
- retention rising between the last two points (or a fit that finds no washout): there is no
  measured washout to extrapolate, so, per the EANM Dosimetry Committee's guidance on
  extrapolation (physical decay only after the last measured point when the clearance is not
  measured; Lassmann et al., EJNMMI 2011;38:192 and Hindorf et al. EJNMMI 2010;37:1238), the
  retention is integrated piecewise linearly through (0, 0) and the measured points, then decays
  with the 131I physical half-life only. Never a negative washout, never an unbounded dose.

Uncertainty (EANM practical guidance on uncertainty analysis, Gear et al., EJNMMI 2018;45:2456: law
of propagation of uncertainty through the dosimetry chain): each time point's activity carries a
relative standard uncertainty (counts, recovery); it is propagated through the retention fit by the
sensitivities d ln a~ / d ln r_i (numerically, the same model refitted), inflated by the fit's
residual scatter when there are more points than parameters; the calibration, common to all time
points, enters a~ directly; the mass enters through the S value (d ln S / d ln m = -1 for local
deposition). The dose is log-normal: D x exp(+-1.96 sigma) is the 95 % interval.
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
RISING = "rising retention: trapezoid, physical decay after the last point"
Z95 = 1.959964


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
class DoseUncertainty:
    """Relative standard uncertainties (of ln D) by source, and their combination."""

    counts_and_fit: float
    mass: float
    calibration: float

    @property
    def relative_sd(self) -> float:
        return math.sqrt(self.counts_and_fit**2 + self.mass**2 + self.calibration**2)

    def interval(self, value: float, z: float = Z95) -> tuple[float, float]:
        return value * math.exp(-z * self.relative_sd), value * math.exp(z * self.relative_sd)


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
    uncertainty: DoseUncertainty | None = None

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


def rising_tia_h(times_h: Sequence[float], fractions: Sequence[float]) -> float:
    """a~ of retention rising to the end: piecewise linear through (0, 0) and the points, times the
    131I decay, then physical decay only after the last point (closed form per segment)."""
    lam = math.log(2) / I131_HALF_LIFE_H
    t = [0.0, *[float(x) for x in times_h]]
    r = [0.0, *[float(x) for x in fractions]]

    def antiderivative(c0: float, slope: float, x: float) -> float:
        return -math.exp(-lam * x) * ((c0 + slope * x) / lam + slope / lam**2)

    total = 0.0
    for (ta, ra), (tb, rb) in zip(zip(t, r, strict=True), zip(t[1:], r[1:], strict=True), strict=False):
        slope = (rb - ra) / (tb - ta)
        c0 = ra - slope * ta
        total += antiderivative(c0, slope, tb) - antiderivative(c0, slope, ta)
    return total + r[-1] * math.exp(-lam * t[-1]) / lam


def _retention_tia(times_h: Sequence[float], percent_ia: Sequence[float], model: str | None = None) -> tuple[
        str, float, float, float]:
    """(model, a~ in h, r0 fraction, biological washout per h) for the points; `model` forces one
    (used to propagate uncertainties through the same model)."""
    order = sorted(range(len(times_h)), key=lambda i: times_h[i])
    t = [float(times_h[i]) for i in order]
    r = [float(percent_ia[i]) for i in order]
    if model is None:  # choose: rising at the end -> RISING; else uptake + washout (>= 3 points) or mono
        if r[-1] >= r[-2]:
            model = RISING
        elif len(t) >= 3 and (fitted := fit_uptake_washout(t, r)) is not None and fitted.washout_per_h > 0:
            return UPTAKE_WASHOUT, fitted.integral_131_h(), fitted.a_fraction, fitted.washout_per_h
        else:
            r0, lam_bio = fit_retention(t, r)
            model = MONO if lam_bio > 0 else RISING
    if model == UPTAKE_WASHOUT:
        fitted = fit_uptake_washout(t, r)
        if fitted is None:
            raise ValueError("uptake + washout refit failed")
        return UPTAKE_WASHOUT, fitted.integral_131_h(), fitted.a_fraction, fitted.washout_per_h
    if model == MONO:
        r0, lam_bio = fit_retention(t, r)
        return MONO, Retention(MONO, r0, lam_bio).integral_131_h(), r0, lam_bio
    return RISING, rising_tia_h(t, [v / 100.0 for v in r]), r[0] / 100.0, 0.0


def _fit_uncertainty(times_h: Sequence[float], percent_ia: Sequence[float], model: str, tia_h: float,
                     activity_rel_sd: Sequence[float]) -> float:
    """Relative SD of a~ from the per-point activity uncertainties, through the same model."""
    n = len(times_h)
    u = list(activity_rel_sd)
    if model == MONO and n > 2:  # more points than parameters: the residual scatter is data too
        r0, lam = fit_retention(times_h, percent_ia)
        resid = [math.log(v / 100.0) - math.log(r0) + lam * t for t, v in zip(times_h, percent_ia, strict=True)]
        scatter = math.sqrt(sum(x * x for x in resid) / (n - 2))
        u = [max(x, scatter) for x in u]
    var = 0.0
    eps = 1e-3
    for i in range(n):
        bumped = [v * (1 + eps) if j == i else v for j, v in enumerate(percent_ia)]
        try:
            _, tia_i, _, _ = _retention_tia(times_h, bumped, model)
        except ValueError:
            return float("nan")
        var += ((math.log(tia_i) - math.log(tia_h)) / math.log1p(eps) * u[i]) ** 2
    return math.sqrt(var)


def lesion_dose(times_h: Sequence[float], percent_ia: Sequence[float], volume_ml: float,
                density_g_per_ml: float = TISSUE_DENSITY_G_PER_ML,
                s_table: Sequence[tuple[float, float]] | None = None,
                activity_rel_sd: Sequence[float] | None = None, mass_rel_sd: float = 0.0,
                calibration_rel_sd: float = 0.0) -> LesionDose:
    """131I dose per administered GBq; with per-point activity uncertainties also its uncertainty."""
    _check(times_h, percent_ia)
    model, tia_h, r0, lam_w = _retention_tia(times_h, percent_ia)
    lam_131 = math.log(2) / I131_HALF_LIFE_H
    mass_g = volume_ml * density_g_per_ml
    s, source = s_value_gy_per_mbq_h(mass_g, s_table)
    gy_per_gbq = s * tia_h * 1000.0
    t_bio = math.log(2) / lam_w if lam_w > 0 else float("inf")
    uncertainty = None
    if activity_rel_sd is not None:
        # d ln S / d ln m: -1 for local deposition, the table's local log-log slope otherwise.
        s_up, _ = s_value_gy_per_mbq_h(mass_g * 1.01, s_table)
        slope = math.log(s_up / s) / math.log(1.01)
        uncertainty = DoseUncertainty(_fit_uncertainty(times_h, percent_ia, model, tia_h, activity_rel_sd),
                                      abs(slope) * mass_rel_sd, calibration_rel_sd)
    return LesionDose(model, t_bio, math.log(2) / (lam_w + lam_131), r0, tia_h, gy_per_gbq, mass_g, source,
                      uncertainty)


def decay_correct_percent(percent_measured: float, t_h: float, half_life_124_h: float = I124_HALF_LIFE_H) -> float:
    """%IA of physically decayed 124I -> decay-corrected to administration."""
    return percent_measured * math.exp(math.log(2) * t_h / half_life_124_h)
