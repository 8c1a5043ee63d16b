"""Render the analytic body into CT numbers and 124I activity concentration on scanner grids."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from node.phantom.anatomy import PatientModel, Region, RigidTransform

# A 124I PET point-spread of about 7 mm FWHM: the long positron range of 124I (mean ~3.4 mm,
# Emax 2.14 MeV) on top of detector resolution; see docs/science.md.
DEFAULT_PSF_FWHM_MM = 7.0
FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))

# Table top of the CT (scanner coordinates, posterior to the patient); not seen by PET.
TABLE_Y_MM = (128.0, 140.0)
TABLE_HU = 250.0
AIR_HU = -1000.0


@dataclass(frozen=True)
class AxialGrid:
    """An axial image stack: rows along +y, columns along +x, slices along z (head first)."""

    columns: int
    rows: int
    pixel_mm: float
    z_mm: tuple[float, ...]

    @property
    def x_mm(self) -> np.ndarray:
        return (np.arange(self.columns) - (self.columns - 1) / 2.0) * self.pixel_mm

    @property
    def y_mm(self) -> np.ndarray:
        return (np.arange(self.rows) - (self.rows - 1) / 2.0) * self.pixel_mm

    @property
    def slice_spacing_mm(self) -> float:
        return abs(self.z_mm[0] - self.z_mm[1]) if len(self.z_mm) > 1 else self.pixel_mm


def axial_positions(z_top: float, z_bottom: float, spacing: float) -> tuple[float, ...]:
    n = int(np.floor((z_top - z_bottom) / spacing)) + 1
    return tuple(round(z_top - i * spacing, 4) for i in range(n))


def _index_range(coords: np.ndarray, lo: float, hi: float) -> slice:
    """Indices of an ascending coordinate array that fall in [lo, hi] (possibly empty)."""
    a = int(np.searchsorted(coords, lo, side="left"))
    b = int(np.searchsorted(coords, hi, side="right"))
    return slice(max(a - 1, 0), min(b + 1, len(coords)))


def render_ct_slices(
    model: PatientModel, pose: RigidTransform, grid: AxialGrid, noise_hu: float, seed: int, z_subsamples: int = 1
) -> Iterator[np.ndarray]:
    """CT numbers (HU, float32) slice by slice, so whole-body CT never sits in memory at once.
    `z_subsamples` > 1 averages that many planes across the slice thickness (the partial-volume
    averaging of a thick reconstructed slice: an oblique vessel stays a tube, not a string of beads)."""
    x, y = grid.x_mm, grid.y_mm
    painted = [(r, *pose.scanner_bbox(*r.shape.bbox())) for r in model.regions if r.hu is not None]
    table_rows = _index_range(y, *TABLE_Y_MM)
    offsets = ((np.arange(z_subsamples) + 0.5) / z_subsamples - 0.5) * grid.slice_spacing_mm
    for k, z_centre in enumerate(grid.z_mm):
        planes = []
        for dz in offsets:
            z = z_centre + dz
            hu = np.full((grid.rows, grid.columns), AIR_HU, np.float32)
            for region, lo, hi in painted:
                if not lo[2] <= z <= hi[2]:
                    continue
                rs, cs = _index_range(y, lo[1], hi[1]), _index_range(x, lo[0], hi[0])
                yy, xx = np.meshgrid(y[rs], x[cs], indexing="ij")
                bx, by, bz = pose.to_body(xx, yy, np.full_like(xx, z))
                inside = region.shape.contains(bx, by, bz)
                hu[rs, cs][inside] = region.hu
            band = hu[table_rows]
            band[band < -500] = TABLE_HU
            planes.append(hu)
        hu = planes[0] if len(planes) == 1 else np.mean(planes, axis=0).astype(np.float32)
        if noise_hu > 0:
            rng = np.random.default_rng([seed, 31, k])
            hu += rng.normal(0.0, noise_hu, hu.shape).astype(np.float32)
        yield hu


def _coverage(region: Region, pose: RigidTransform, xs: np.ndarray, ys: np.ndarray, zs: np.ndarray,
              spacing: tuple[float, float, float], supersample: int) -> np.ndarray:
    """Fraction of each voxel (z, y, x) inside the region, by regular sub-sampling."""
    frac = np.zeros((len(zs), len(ys), len(xs)), np.float32)
    offsets = (np.arange(supersample) + 0.5) / supersample - 0.5
    for oz in offsets:
        for oy in offsets:
            for ox in offsets:
                zz, yy, xx = np.meshgrid(zs + oz * spacing[0], ys + oy * spacing[1], xs + ox * spacing[2],
                                         indexing="ij")
                frac += region.shape.contains(*pose.to_body(xx, yy, zz))
    return frac / supersample**3


def positron_range_kernel(spacing_kji: tuple[float, float, float], mean_range_mm: float) -> np.ndarray:
    """Where positrons annihilate, voxelised: radial density exp(-r/l) / (4 pi l r^2) (an
    exponential distribution of the 3D range with mean l), cut at 5 l. Sharp cusp, long tails: what
    makes a 124I point spread unlike a Gaussian (the projected positron-range profiles of Derenzo,
    and Jodal et al., Phys Med Biol 2012;57:3931, are cusp-shaped with exponential tails)."""
    lam = mean_range_mm
    half = [int(np.ceil(5 * lam / s)) for s in spacing_kji]
    sub = (np.arange(5) + 0.5) / 5 - 0.5
    kernel = np.zeros([2 * h + 1 for h in half])
    for idx in np.ndindex(kernel.shape):
        if all(i == h for i, h in zip(idx, half, strict=True)):
            continue
        centre = [(i - h) * s for i, h, s in zip(idx, half, spacing_kji, strict=True)]
        zz, yy, xx = np.meshgrid(*[c + sub * s for c, s in zip(centre, spacing_kji, strict=True)], indexing="ij")
        r = np.sqrt(zz**2 + yy**2 + xx**2)
        kernel[idx] = np.mean(np.exp(-r / lam) / (4 * np.pi * lam * r**2)) * float(np.prod(spacing_kji))
    r_eq = (3 * float(np.prod(spacing_kji)) / (4 * np.pi)) ** (1 / 3)
    kernel[tuple(half)] = 1.0 - np.exp(-r_eq / lam)  # the mass annihilating in the emitting voxel
    return kernel / kernel.sum()


def respiratory_blur(vol: np.ndarray, z_asc: np.ndarray, slice_mm: float, base_z: float, amplitude_mm: float,
                     ) -> np.ndarray:
    """Breathing during the PET frame: activity near the diaphragm spread over `amplitude_mm`
    cranio-caudally (lower-lobe lesions move ~12 mm on average, Seppenwoolde et al., Int J Radiat Oncol
    Biol Phys 2002;53:822), full below the lung base, fading out 80 mm above it. The CT is a snapshot."""
    steps = np.linspace(0.0, amplitude_mm, 7)
    moved = np.mean([ndimage.shift(vol, (s / slice_mm, 0, 0), order=1, mode="nearest") for s in steps], axis=0)
    w = np.clip((base_z + 80.0 - z_asc) / 80.0, 0.0, 1.0).astype(np.float32)[:, None, None]
    return (1 - w) * vol + w * moved


def render_pet_volume(
    model: PatientModel,
    pose: RigidTransform,
    grid: AxialGrid,
    suv_to_bq_per_ml: float,
    psf_fwhm_mm: float,
    noise: float,
    seed: int,
    positron_range_mm: float = 0.0,
    respiratory_mm: float = 0.0,
    lung_base_z: float | None = None,
) -> np.ndarray:
    """Activity concentration (Bq/ml, float32, shape slices x rows x columns) as the scanner
    reconstructs it: partial-volume sampled, (optionally) blurred by breathing near the diaphragm and
    by the positron range, blurred by the PSF, with spatially correlated noise whose variance grows
    with the local activity (Poisson-like)."""
    from node.phantom.realism import Textured, liver_texture

    x, y = grid.x_mm, grid.y_mm
    z_desc = np.array(grid.z_mm)
    z = z_desc[::-1]  # ascending for searchsorted; flipped back at the end
    spacing = (grid.slice_spacing_mm, grid.pixel_mm, grid.pixel_mm)
    vol = np.zeros((len(z), len(y), len(x)), np.float32)
    for region in model.regions:
        if region.suv is None:
            continue
        lo, hi = pose.scanner_bbox(*region.shape.bbox())
        zs, rs, cs = _index_range(z, lo[2], hi[2]), _index_range(y, lo[1], hi[1]), _index_range(x, lo[0], hi[0])
        if zs.stop <= zs.start or rs.stop <= rs.start or cs.stop <= cs.start:
            continue
        n_vox = (zs.stop - zs.start) * (rs.stop - rs.start) * (cs.stop - cs.start)
        # Lesions and small organs get 4^3 sub-samples (their partial volume is what is measured);
        # large organs and the body outline are sampled at voxel centres.
        ss = 4 if n_vox <= 40_000 else (2 if n_vox <= 400_000 else 1)
        frac = _coverage(region, pose, x[cs], y[rs], z[zs], spacing, ss)
        block = vol[zs, rs, cs]
        block *= 1.0 - frac
        value = np.float32(region.suv * suv_to_bq_per_ml)
        if isinstance(region.shape, Textured):
            zz, yy, xx = np.meshgrid(z[zs], y[rs], x[cs], indexing="ij")
            value = value * liver_texture(region.shape, *pose.to_body(xx, yy, zz))
        block += frac * value
    if respiratory_mm > 0 and lung_base_z is not None:
        vol = respiratory_blur(vol, z, grid.slice_spacing_mm, lung_base_z, respiratory_mm).astype(np.float32)
    if positron_range_mm > 0:
        from scipy.signal import oaconvolve

        vol = oaconvolve(vol, positron_range_kernel(spacing, positron_range_mm), mode="same").astype(np.float32)
        np.maximum(vol, 0, out=vol)  # FFT round-off
    sigma_mm = psf_fwhm_mm * FWHM_TO_SIGMA
    vol = ndimage.gaussian_filter(vol, sigma=[sigma_mm / s for s in spacing], mode="constant")
    if noise > 0:
        rng = np.random.default_rng([seed, 17])
        white = rng.standard_normal(vol.shape, dtype=np.float32)
        # Reconstruction correlates noise over about one voxel; renormalise to unit variance.
        field = ndimage.gaussian_filter(white, sigma=1.0)
        field /= max(float(field.std()), 1e-12)
        reference = np.float32(0.5 * suv_to_bq_per_ml)  # soft-tissue level: CoV there equals `noise`
        vol += np.float32(noise) * np.sqrt(np.maximum(vol, 0) * reference) * field
        np.maximum(vol, 0, out=vol)
    return vol[::-1].copy()
