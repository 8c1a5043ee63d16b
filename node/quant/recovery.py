"""Partial-volume recovery by the best size estimate, shown beside the measured values.

Small lesions lose SUVmax to the PET resolution; a recovery coefficient RC(d) (measured / true
concentration of a sphere of diameter d) restores it. The delineated PET volume is a poor index below
about 2 x FWHM (it grows to the blur's extent: 1.4-4.6 x too large below 10 mm), so the size comes from,
in order: the CT nodule's diameter (`size_source` "ct"), the blurred-sphere fit when it resolved the lesion
("sphere_fit"), else the delineated volume's equivalent sphere ("volume").

Default curve: 124I, PSF reconstruction, spheres in lung-equivalent background (EJNMMI Physics 2022;9:56,
"Positron range in combination with point-spread-function correction: an evaluation of different
implementations for [124I]-PET imaging", doi:10.1186/s40658-022-00482-y, Table 2: 8.5 mm 0.43, 19.4 mm 0.72),
flat outside the measured range (no extrapolation). Recovery depends on scanner, reconstruction and the
tissue around the lesion: sites configure their own curve (`quantification.recovery.curve`).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from node.quant.models import Lesion, Recovery, SizeSource

DEFAULT_CURVE_MM: tuple[tuple[float, float], ...] = ((8.5, 0.43), (19.4, 0.72))


def best_size(lesion: Lesion) -> tuple[float, SizeSource]:
    if lesion.ct_diameter_mm:
        return float(lesion.ct_diameter_mm), SizeSource.CT
    if lesion.sphere is not None and lesion.sphere.resolved:
        return 2 * lesion.sphere.radius_mm, SizeSource.SPHERE_FIT
    return lesion.equivalent_diameter_mm, SizeSource.VOLUME


def rc_at(curve: tuple[tuple[float, float], ...], diameter_mm: float) -> float:
    d = np.array([p[0] for p in curve])
    rc = np.array([p[1] for p in curve])
    order = np.argsort(d)
    return float(np.interp(diameter_mm, d[order], rc[order]))


def recovery(lesion: Lesion, curve: tuple[tuple[float, float], ...]) -> Recovery | None:
    """The contract's `recovery` object of a metastasis or remnant (None for physiological uptake)."""
    if not lesion.label.followed:
        return None
    size, source = best_size(lesion)
    rc = rc_at(curve, size)
    return Recovery(size_mm=round(size, 2), size_source=source, recovery_coefficient=round(rc, 4),
                    suv_max_corrected=round(lesion.suv_max / rc, 4),
                    activity_mbq_corrected=round(lesion.activity_mbq / rc, 6))


def with_recovery(lesions: list[Lesion], curve: tuple[tuple[float, float], ...] | None) -> list[Lesion]:
    if not curve:
        return lesions
    return [replace(les, recovery=recovery(les, curve)) for les in lesions]
