"""Lesion size from a blurred-sphere fit, independent of any delineation threshold.

The image near a lesion is modelled as a uniform sphere (centre c, radius R, activity concentration
C) in a uniform background b, blurred by the scanner's isotropic Gaussian point-spread function
(standard deviation sigma):

    I(x) = b + (C - b) * S(|x - c|; R, sigma)
    S(r) = 1/2 [erf((R - r)/(sqrt2 sigma)) + erf((R + r)/(sqrt2 sigma))]
           - sigma / (r sqrt(2 pi)) [exp(-(R - r)^2 / 2 sigma^2) - exp(-(R + r)^2 / 2 sigma^2)]

(the convolution of a ball with a 3-D Gaussian; e.g. Chen et al., "Simple method for partial
volume correction by fitting", IEEE TMI 1999). All seven parameters are fitted by least squares to
the voxels around the lesion, so the scanner's resolution need not be known. The sphere is also the
dosimetry model of the lesion mass (Jentzen et al. 2008, docs/science.md). R is determined only when the
lesion is not much smaller than the blur: callers check `resolved`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares
from scipy.special import erf

SQRT2 = math.sqrt(2.0)
SQRT2PI = math.sqrt(2.0 * math.pi)


@dataclass(frozen=True)
class SphereFit:
    radius_mm: float
    sigma_mm: float
    concentration: float  # same unit as the image
    background: float
    rms_residual: float  # relative to (concentration - background)
    resolved: bool  # radius well determined: R >= sigma and a good fit

    @property
    def volume_ml(self) -> float:
        return 4.0 / 3.0 * math.pi * self.radius_mm**3 / 1000.0


def blurred_sphere(r: np.ndarray, radius: float, sigma: float) -> np.ndarray:
    r = np.maximum(r, 1e-6)
    a, b = (radius - r) / (SQRT2 * sigma), (radius + r) / (SQRT2 * sigma)
    gauss = np.exp(-((radius - r) ** 2) / (2 * sigma**2)) - np.exp(-((radius + r) ** 2) / (2 * sigma**2))
    return 0.5 * (erf(a) + erf(b)) - sigma / (r * SQRT2PI) * gauss


def fit_sphere(values: np.ndarray, points_mm: np.ndarray, centre_mm: np.ndarray, radius0_mm: float,
               peak: float, background0: float) -> SphereFit | None:
    """Fit to `values` at `points_mm` (N x 3), starting from the delineation; None if it fails."""
    if len(values) < 20 or peak <= background0:
        return None
    scale = peak - background0

    def residual(p: np.ndarray) -> np.ndarray:
        cx, cy, cz, radius, sigma, conc, bg = p
        r = np.linalg.norm(points_mm - np.array([cx, cy, cz]), axis=1)
        return (bg + (conc - bg) * blurred_sphere(r, radius, sigma) - values) / scale

    x0 = np.array([*centre_mm, max(radius0_mm, 2.0), 3.0, peak, background0])
    lower = [*(centre_mm - 10), 0.5, 0.8, background0, -abs(peak)]
    upper = [*(centre_mm + 10), 80.0, 15.0, 50.0 * peak, peak]
    try:
        fit = least_squares(residual, np.clip(x0, lower, upper), bounds=(lower, upper), x_scale="jac",
                            max_nfev=200)
    except (ValueError, np.linalg.LinAlgError):
        return None
    if not fit.success and fit.status <= 0:
        return None
    _, _, _, radius, sigma, conc, bg = (float(v) for v in fit.x)
    rms = float(np.sqrt(np.mean(fit.fun**2)))
    # Diameter >= 1.5 x FWHM (2R >= 1.5 x 2.355 sigma): below it only R^3 x C is determined.
    resolved = radius >= 1.75 * sigma and rms < 0.15 and 0.9 < sigma < 14.5
    return SphereFit(radius, sigma, conc, bg, rms, resolved)
