"""Is a focus more than noise? A significance test of SUVpeak against the noise measured around it.

Late and low-activity 124I scans are count-poor: image noise (CoV 0.3 and more at soft tissue) makes
single-voxel maxima in liver, blood pool and muscle that stand out from their surroundings by any
fixed contrast rule. The test here asks instead how unlikely the focus is under the local noise:

- The statistic is SUVpeak, the mean in a 1 cm³ sphere (PERCIST; Wahl et al., J Nucl Med
  2009;50:122S): its statistical noise is far below that of SUVmax, which noise alone biases upwards
  by 4-30 % (Lodge, Chaudhry, Wahl, J Nucl Med 2012;53:1041).
- Its distribution where there is no focus is measured at the site: the SUVpeak values in a shell
  15-30 mm around the candidate's maximum (inside the body). Median = the local level; robust SD
  (1.4826 x median absolute deviation) = the local noise of SUVpeak. Being measured on the same
  statistic, it includes the spatial correlation of reconstruction noise and the organ's own texture;
  no noise model, no scanner constant.
- The decision level controls the false foci per scan: with N = body volume / 1 ml (SUVpeak has at
  most one independent value per ml) tests, a one-sided level alpha = F / N (Bonferroni) gives at most
  F expected noise foci per scan; z_crit = Phi^-1(1 - F / N). F is `detection.false_foci_per_scan`.
- A focus larger than the inner shell (its maximum's shell lies inside it) cannot be judged that way;
  it is accepted as a mass when its half-maximum region is significant against the shell around the
  region AND its SUVpeak median over the region is at least `min_contrast` x that shell's median and
  `min_reference_ratio` x the soft-tissue reference (the rules a focus' maximum meets already, applied
  to the mass as a whole): a large metastasis or the bladder passes, a liver or blood pool does not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from node.quant.volume import Volume

SEED_SHELL_MM = (15.0, 30.0)
MAD_TO_SD = 1.4826  # normal consistency constant of the median absolute deviation


def peak_map(suv: np.ndarray, spacing_kji: tuple[float, float, float]) -> np.ndarray:
    """SUVpeak around every voxel (the mean in a 1 cm³ sphere centred on it)."""
    from scipy.signal import oaconvolve

    from node.quant.measure import peak_kernel

    kernel = peak_kernel(spacing_kji).astype(np.float32)
    return oaconvolve(suv.astype(np.float32), kernel, mode="same").astype(np.float32)


def critical_z(false_foci_per_scan: float, body_ml: float) -> float:
    from scipy.stats import norm

    return float(norm.isf(false_foci_per_scan / max(body_ml, 1.0)))


def robust_z(value: float, sample: np.ndarray) -> float | None:
    if sample.size < 10:
        return None
    median = float(np.median(sample))
    noise = MAD_TO_SD * float(np.median(np.abs(sample - median)))
    return (value - median) / max(noise, 1e-6)


@dataclass
class SignificanceTest:
    peak: np.ndarray  # SUVpeak map
    inside: np.ndarray
    spacing_kji: tuple[float, float, float]
    voxel_ml: float
    z_crit: float
    min_contrast: float
    min_reference_suv: float
    offsets: np.ndarray  # the seed shell

    @classmethod
    def build(cls, suv_vol: Volume, inside: np.ndarray, det: object, reference_suv: float | None) -> SignificanceTest:
        from node.quant.detect import ball_offsets

        spacing = suv_vol.spacing[::-1]
        body_ml = float(inside.sum()) * suv_vol.voxel_ml
        ref = reference_suv if reference_suv is not None and math.isfinite(reference_suv) else 0.0
        return cls(peak_map(suv_vol.array, spacing), inside, spacing, suv_vol.voxel_ml,
                   critical_z(det.false_foci_per_scan, body_ml), det.min_contrast,
                   det.min_reference_ratio * ref, ball_offsets(spacing, *SEED_SHELL_MM))

    def _peak_at(self, seed: tuple[int, int, int]) -> float:
        box = tuple(slice(max(c - 1, 0), c + 2) for c in seed)
        return float(self.peak[box].max())

    def seed_z(self, seed: tuple[int, int, int], labels: np.ndarray | None = None) -> float:
        """z of SUVpeak at a maximum against the SUVpeak values 15-30 mm around it."""
        idx = self.offsets + np.asarray(seed)
        ok = np.all((idx >= 0) & (idx < np.array(self.peak.shape)), axis=1)
        idx = idx[ok]
        keep = self.inside[idx[:, 0], idx[:, 1], idx[:, 2]]
        sample = self.peak[idx[keep, 0], idx[keep, 1], idx[keep, 2]]
        z = robust_z(self._peak_at(seed), sample)
        return -math.inf if z is None else z

    def focus_z(self, seed: tuple[int, int, int], labels: np.ndarray, box: tuple[slice, ...],
                region: np.ndarray) -> float | None:
        """The focus' z when it is significant (module docstring), else None."""
        z = self.seed_z(seed)
        if z >= self.z_crit:
            return z
        r_in = SEED_SHELL_MM[0]
        if float(region.sum()) * self.voxel_ml < 4 / 3 * math.pi * (r_in / 10) ** 3:
            return None  # small: the seed shell judged it
        pad = tuple(int(np.ceil(SEED_SHELL_MM[1] / s)) + 1 for s in self.spacing_kji)
        big = tuple(slice(max(b.start - p, 0), min(b.stop + p, n))
                    for b, p, n in zip(box, pad, self.peak.shape, strict=True))
        local = np.zeros([b.stop - b.start for b in big], bool)
        inner = tuple(slice(b.start - g.start, b.stop - g.start) for b, g in zip(box, big, strict=True))
        local[inner] = region
        dist = ndimage.distance_transform_edt(~local, sampling=self.spacing_kji)
        shell = (dist >= SEED_SHELL_MM[0]) & (dist <= SEED_SHELL_MM[1]) & self.inside[big] & (labels[big] == 0)
        sample = self.peak[big][shell]
        z_mass = robust_z(self._peak_at(seed), sample)
        if z_mass is None or z_mass < self.z_crit:
            return None
        mass_level = float(np.median(self.peak[big][local]))
        if mass_level < self.min_contrast * float(np.median(sample)) or mass_level < self.min_reference_suv:
            return None
        return z_mass
