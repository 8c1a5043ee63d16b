"""Blurred-sphere fit: lesion size without a threshold, from a synthetic image made another way
(a finely sampled ball blurred numerically, then averaged into coarse voxels)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from node.quant.sphere import blurred_sphere, fit_sphere


def synthetic(radius_mm: float, fwhm_mm: float, voxel_mm: float = 4.0, conc: float = 10.0, bg: float = 1.0,
              offset_mm: tuple[float, float, float] = (0.7, -1.1, 0.4)) -> tuple[np.ndarray, np.ndarray]:
    """(values, points) of a ball at `offset_mm` on a 1 mm grid, Gaussian-blurred, box-averaged to
    `voxel_mm` voxels: partial voxels and all, as a scanner would see it."""
    fine = 1.0
    n = 64
    axis = (np.arange(n) - n / 2 + 0.5) * fine
    z, y, x = np.meshgrid(axis, axis, axis, indexing="ij")
    ball = ((x - offset_mm[0]) ** 2 + (y - offset_mm[1]) ** 2 + (z - offset_mm[2]) ** 2) <= radius_mm**2
    image = ndimage.gaussian_filter(bg + (conc - bg) * ball.astype(float), fwhm_mm / 2.3548 / fine)
    f = int(voxel_mm / fine)
    coarse = image.reshape(n // f, f, n // f, f, n // f, f).mean(axis=(1, 3, 5))
    c_axis = axis.reshape(-1, f).mean(axis=1)
    cz, cy, cx = np.meshgrid(c_axis, c_axis, c_axis, indexing="ij")
    points = np.stack([cx.ravel(), cy.ravel(), cz.ravel()], axis=1)
    return coarse.ravel(), points


@pytest.mark.parametrize(("radius_mm", "fwhm_mm"), [(10.0, 7.0), (7.0, 7.0), (16.0, 9.0)])
def test_fit_recovers_size_of_resolved_spheres(radius_mm: float, fwhm_mm: float) -> None:
    values, points = synthetic(radius_mm, fwhm_mm)
    near = np.linalg.norm(points, axis=1) <= radius_mm + 12
    fit = fit_sphere(values[near], points[near], np.zeros(3), radius_mm * 1.2, float(values.max()), 1.0)
    assert fit is not None and fit.resolved
    assert fit.radius_mm == pytest.approx(radius_mm, rel=0.03)
    assert fit.volume_ml == pytest.approx(4 / 3 * math.pi * radius_mm**3 / 1000, rel=0.09)
    assert fit.concentration == pytest.approx(10.0, rel=0.05)
    # The fitted blur includes the 4 mm voxels' own (box: sigma^2 + 4^2/12).
    assert 2.3548 * fit.sigma_mm == pytest.approx(math.sqrt(fwhm_mm**2 + 2.3548**2 * 16 / 12), rel=0.1)


def test_small_sphere_is_not_resolved() -> None:
    values, points = synthetic(3.0, 7.0)
    near = np.linalg.norm(points, axis=1) <= 15
    fit = fit_sphere(values[near], points[near], np.zeros(3), 6.0, float(values.max()), 1.0)
    assert fit is None or not fit.resolved


def test_model_limits() -> None:
    r = np.array([0.0, 5.0, 100.0])
    s = blurred_sphere(r, 20.0, 3.0)
    assert s[0] == pytest.approx(1.0, abs=1e-6) and s[2] == pytest.approx(0.0, abs=1e-9)
    assert blurred_sphere(np.array([20.0]), 20.0, 0.01)[0] == pytest.approx(0.5, abs=1e-3)  # edge of a sharp ball
