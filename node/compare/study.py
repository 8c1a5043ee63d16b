"""Relate a quantified scan to earlier scans of the same patient: the `comparison` section (two
administrations, the TSH question) and the `dosimetry` section (one administration imaged at
several times) of results.json. Pure over results documents, headers and coarse CT volumes."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from node.assemble import read_volume
from node.compare.context import Administration, same_administration
from node.compare.dosimetry import Z95, lesion_dose
from node.compare.matching import Match, equivalent_radius_mm, match_lesions
from node.compare.register import register_rigid
from node.compare.repeatability import DEFAULT_VOXEL_MM, ChangeLimits, lesion_size_mm, noise_constant
from node.compare.settings import ComparisonSettings, DoseUncertaintySettings
from node.compare.tsh import TRACKED_LABELS, compare_scans, time_point
from node.quant.volume import Volume, resample_like

__all__ = [
    "ComparisonSettings",
    "DoseUncertaintySettings",
    "Pairing",
    "ScanView",
    "compare_scans",
    "ct_on_coarse_grid",
    "dosimetry_section",
    "inherit_tracking",
    "pair_scans",
    "relate_scans",
    "time_point",
    "tracked",
]


@dataclass(frozen=True)
class ScanView:
    """One quantified scan as the comparison sees it: its results.json, first PET header and CT on a
    coarse grid (None without CT)."""

    doc: dict[str, Any]
    header: Dataset
    ct: Volume | None = None
    pet: Volume | None = None  # SUV on a coarse grid: the registration fallback without CT
    suv: Volume | None = None  # SUV at full resolution: local noise for change limits and dose uncertainty

    @property
    def administration(self) -> Administration:
        return Administration(datetime.fromisoformat(self.doc["injection_datetime"]),
                              float(self.doc["injected_activity_bq"]))


@dataclass(frozen=True)
class Pairing:
    """Lesions of a prior scan matched to the current one after registration."""

    registration: dict[str, Any]
    prior_lesions: list[dict[str, Any]]
    current_lesions: list[dict[str, Any]]
    mapped_mm: np.ndarray  # prior centroids in the current scan's coordinates
    matches: list[Match]
    untracked_prior: list[tuple[dict[str, Any], np.ndarray]] = field(default_factory=list)  # (lesion, mapped)

    def current_to_prior(self) -> dict[int, dict[str, Any]]:
        """{current lesion id: matched prior lesion}."""
        return {self.current_lesions[m.second]["id"]: self.prior_lesions[m.first] for m in self.matches
                if m.first is not None and m.second is not None}


def ct_on_coarse_grid(ct_paths: Sequence[Path], spacing_mm: float = 4.0) -> Volume:
    """A CT series on a grid of its own extent and orientation with `spacing_mm` voxels (enough for a
    rigid registration, and small)."""
    ct, _ = read_volume(ct_paths, "CT", dtype=np.int16)
    extent = np.array(ct.array.shape[::-1]) * np.array(ct.spacing)
    shape = tuple(int(max(2, round(e / spacing_mm))) for e in extent[::-1])
    grid = Volume(np.empty(shape, np.uint8), ct.origin, (spacing_mm,) * 3, ct.direction)
    return resample_like(ct, grid, -1000.0)


def tracked(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Lesions followed over time: metastases and the thyroid-bed remnant (not physiological uptake)."""
    return [les for les in doc["lesions"] if les["label"] in TRACKED_LABELS]


def pair_scans(prior: ScanView, current: ScanView, gate_mm: float, affine: bool = False) -> Pairing:
    prior_lesions, current_lesions = tracked(prior.doc), tracked(current.doc)
    others = [les for les in prior.doc["lesions"] if les["label"] not in TRACKED_LABELS]
    p1 = np.array([les["centroid_mm"] for les in prior_lesions + others], float).reshape(-1, 3)
    mapped = p1
    registration: dict[str, Any] = {"method": "none (no CT in one scan): scanner coordinates"}
    if prior.ct is not None and current.ct is not None and len(p1):
        reg = register_rigid(current.ct, prior.ct, affine=affine)
        mapped = reg.scan1_to_scan2(p1)
        registration = {"method": f"{'rigid then affine' if affine else 'rigid'} CT-CT, Mattes mutual information",
                        "metric": reg.metric, "iterations": reg.iterations}
    elif prior.pet is not None and current.pet is not None and len(p1):
        reg = register_rigid(current.pet, prior.pet, modality="PT", affine=affine)
        mapped = reg.scan1_to_scan2(p1)
        registration = {"method": f"{'rigid then affine' if affine else 'rigid'} PET-PET (no CT in one scan), "
                                  "Mattes mutual information",
                        "metric": reg.metric, "iterations": reg.iterations}
    mapped, mapped_others = mapped[:len(prior_lesions)], mapped[len(prior_lesions):]
    p2 = np.array([les["centroid_mm"] for les in current_lesions], float).reshape(-1, 3)
    r1 = np.array([equivalent_radius_mm(les["volume_ml"]) for les in prior_lesions])
    r2 = np.array([equivalent_radius_mm(les["volume_ml"]) for les in current_lesions])
    return Pairing(registration, prior_lesions, current_lesions, mapped, match_lesions(mapped, p2, gate_mm, r1, r2),
                   list(zip(others, mapped_others, strict=True)))


def threshold_decision(ci95: list[float] | None, threshold_gy: float) -> str:
    """"reaches" when the lower 95 % bound reaches the threshold, "below" when the upper bound does
    not, else "uncertain" (also when no uncertainty could be computed)."""
    if ci95 is None:
        return "uncertain"
    if ci95[0] >= threshold_gy:
        return "reaches"
    return "below" if ci95[1] < threshold_gy else "uncertain"


def activity_counts_sd(lesion: dict[str, Any], vol: Volume | None, soft_tissue_suv: float | None,
                       limits: ChangeLimits) -> float:
    """Relative SD of a lesion's summed activity from image noise: voxel variance k^2 x (counting
    statistics, node/compare/repeatability.py), correlated over about one resolution cell, summed over
    the lesion: k sqrt(c / S), S the lesion's SUV sum in voxels, c the voxels per resolution cell."""
    radius, fwhm = lesion_size_mm(lesion)
    k = noise_constant(vol, lesion["centroid_mm"], radius) if vol is not None else None
    if k is None:
        reference = soft_tissue_suv if soft_tissue_suv and soft_tissue_suv > 0 else 1.0
        k = limits.fallback_noise_cov * math.sqrt(reference)
    voxel = vol.spacing if vol is not None else DEFAULT_VOXEL_MM
    voxel_ml = float(np.prod(voxel)) / 1000.0
    cell = float(np.clip((fwhm / float(np.prod(voxel)) ** (1 / 3)) ** 3, 1.0, 64.0))
    total = float(lesion.get("suv_mean") or lesion["suv_max"]) * float(lesion["volume_ml"]) / voxel_ml
    return k * math.sqrt(cell / total) if total > 0 else 1.0


def mass_rel_sd(resolved_fits: Sequence[dict[str, Any]], volume_ml: float, lesion: dict[str, Any]) -> float:
    """Relative SD of the mass, 3 u(d) / d: resolved fits -> the spread of their diameters over the
    time points and a voxel's quantisation (4 mm / 2 sqrt 3, a uniform error over one voxel);
    unresolved -> half the resolution (the fit's FWHM, else 7 mm) on the delineated diameter."""
    if resolved_fits:
        d = [float(f["diameter_mm"]) for f in resolved_fits]
        spread = float(np.std(d, ddof=1)) / math.sqrt(len(d)) if len(d) > 1 else 0.0
        quantisation = DEFAULT_VOXEL_MM[0] / (2 * math.sqrt(3))
        return 3.0 * math.hypot(spread, quantisation) / float(np.mean(d))
    _, fwhm = lesion_size_mm(lesion)
    diameter = 10.0 * (6.0 * volume_ml / math.pi) ** (1 / 3)
    return 3.0 * (fwhm / 2.0) / diameter


def dosimetry_section(current: ScanView, priors: Sequence[tuple[ScanView, Pairing]],
                      settings: ComparisonSettings | None = None) -> dict[str, Any]:
    """The `dosimetry` section from the current scan and earlier scans of the same administration.

    Per lesion, each time point where it was matched contributes its retention: the recovered
    (spill-out included) %IA when results carry it, else the VOI's %IA; 1 g/ml.
    """
    settings = settings or ComparisonSettings()
    views = sorted([p for p, _ in priors] + [current], key=lambda v: float(v.doc["uptake_time_h"]))
    links = [(view, pairing.current_to_prior()) for view, pairing in priors]
    out = []
    for lesion in tracked(current.doc):
        points = [(view, prior_map[lesion["id"]]) for view, prior_map in links if lesion["id"] in prior_map]
        points.append((current, lesion))
        points.sort(key=lambda p: float(p[0].doc["uptake_time_h"]))
        times = [float(v.doc["uptake_time_h"]) for v, _ in points]
        retention = [les.get("percent_injected_activity_recovered") or les.get("percent_injected_activity")
                     for _, les in points]
        row: dict[str, Any] = {"current_id": lesion["id"], "site": lesion["site"], "times_h": times,
                               "percent_injected_activity": retention, "lesion_ids": [les["id"] for _, les in points]}
        if len(points) < 2:
            row["error"] = "matched at one time point only: no dosimetry"
            out.append(row)
            continue
        if any(r is None or r <= 0 for r in retention):
            row["error"] = "no %IA at every time point (administration time or activity unknown)"
            out.append(row)
            continue
        # Mass: the blurred-sphere fits that resolved the lesion, averaged over the time points;
        # else the delineated volume at the best contrast (flagged: overestimated below ~1.5 FWHM).
        resolved = [les["sphere_fit"] for _, les in points if (les.get("sphere_fit") or {}).get("resolved")]
        fits = [f["volume_ml"] for f in resolved]
        if fits:
            volume_ml, mass_source = float(np.mean(fits)), f"sphere fit ({len(fits)} of {len(points)} time points)"
        else:
            volume_ml = max(points, key=lambda p: p[1]["suv_max"])[1]["volume_ml"]
            mass_source = "delineated volume (lesion not resolved by the sphere fit)"
        # Uncertainty (EANM 2018, Gear et al.): per time point counts (local image noise over the
        # lesion) and recovery; the mass from the spread of the sphere fits and the voxel size, or,
        # for an unresolved lesion, half the resolution on its diameter.
        u_points = [math.hypot(activity_counts_sd(les, view.suv, view.doc.get("reference_soft_tissue_suv"),
                                                  settings.limits),
                               settings.uncertainty.recovery_resolved if (les.get("sphere_fit") or {}).get("resolved")
                               else settings.uncertainty.recovery_unresolved) for view, les in points]
        mass_sd = mass_rel_sd(resolved, volume_ml, points[-1][1])
        try:
            dose = lesion_dose(times, retention, volume_ml, s_table=settings.s_table, activity_rel_sd=u_points,
                               mass_rel_sd=mass_sd, calibration_rel_sd=settings.uncertainty.calibration)
        except ValueError as exc:
            row["error"] = str(exc)
            out.append(row)
            continue
        u = dose.uncertainty
        sd = u.relative_sd if u is not None and math.isfinite(u.relative_sd) else None

        def interval(value: float, sd: float | None = sd) -> list[float] | None:
            return None if sd is None else [round(value * math.exp(-Z95 * sd), 3), round(value * math.exp(Z95 * sd), 3)]

        reference = dose.dose_gy(settings.dose_activities_gbq[0])
        ref_ci = interval(reference)
        row.update({
            "model": dose.model, "mass_g": round(dose.mass_g, 4), "s_value": dose.s_value_source,
            "equivalent_diameter_mm": round(10.0 * (6.0 * volume_ml / np.pi) ** (1 / 3), 1),
            # Partial-volume losses matter below 2-3 x FWHM (Soret, Bacharach, Buvat, J Nucl Med 2007;
            # 48:932): below 2 x FWHM the mass, hence the dose, is flagged as uncertain.
            "mass_source": mass_source,
            "mass_reliable": bool(fits) and all(f["diameter_mm"] >= 2 * f["fwhm_mm"] for f in resolved),
            "biological_half_life_h": round(dose.biological_half_life_h, 2) if math.isfinite(
                dose.biological_half_life_h) else None,
            "effective_half_life_131_h": round(dose.effective_half_life_131_h, 2),
            "time_integrated_activity_h": dose.tia_h, "gy_per_gbq": round(dose.gy_per_gbq, 3),
            "gy_per_gbq_sd": round(dose.gy_per_gbq * sd, 3) if sd is not None else None,
            "gy_per_gbq_ci95": interval(dose.gy_per_gbq),
            "uncertainty": None if u is None else {
                "relative_sd": round(sd, 4) if sd is not None else None,
                "counts_and_fit": round(u.counts_and_fit, 4), "mass": round(u.mass, 4),
                "calibration": round(u.calibration, 4), "per_time_point_activity": [round(x, 4) for x in u_points]},
            "predicted_dose_gy": {f"{a:g}_gbq": round(dose.dose_gy(a), 2) for a in settings.dose_activities_gbq},
            "predicted_dose_gy_ci95": {f"{a:g}_gbq": interval(dose.dose_gy(a)) for a in settings.dose_activities_gbq},
            # A threshold counts as reached only when the lower 95 % bound reaches it.
            "treat_threshold": threshold_decision(ref_ci, settings.treat_threshold_gy),
            "nodal_response": threshold_decision(ref_ci, settings.nodal_response_gy),
            "reaches_treat_threshold": threshold_decision(ref_ci, settings.treat_threshold_gy) == "reaches",
            "reaches_nodal_response_dose": threshold_decision(ref_ci, settings.nodal_response_gy) == "reaches",
        })
        out.append(row)
    return {
        "method": "retention from %IA decay-corrected to administration (spill-out recovered); "
                  "mono-exponential, or uptake + washout with >= 3 time points; retention rising at the end: "
                  "trapezoid and physical decay only after the last point; 124I->131I half-life scaling; "
                  "uncertainty by propagation (EANM 2018: counts, recovery, fit, mass, calibration); "
                  + ("sphere S-value table" if settings.s_values else
                     "local deposition (D = 0.11066 A~[MBq h] / m[g])"),
        "time_points": [time_point(v, settings.tsh) for v in views],
        "thresholds_gy": {"treat": settings.treat_threshold_gy, "nodal_response": settings.nodal_response_gy,
                          "at_activity_gbq": settings.dose_activities_gbq[0],
                          "decision": "reaches when the lower 95 % bound does, below when the upper does not, "
                                      "else uncertain"},
        "uncertainty_assumptions": {"calibration": settings.uncertainty.calibration,
                                    "recovery_resolved": settings.uncertainty.recovery_resolved,
                                    "recovery_unresolved": settings.uncertainty.recovery_unresolved},
        "lesions": out,
    }


def matched_uptake_values(current: ScanView, series: Sequence[tuple[ScanView, Pairing]],
                          at_h: float) -> dict[int, dict[str, Any]]:
    """{current lesion id: SUVmax at `at_h` h} interpolated log-linearly between the two time points of
    the current administration that bracket `at_h` (exact at a time point), for lesions matched at
    both; nothing outside the series' time range (no extrapolation)."""
    links = [(view, pairing.current_to_prior()) for view, pairing in series]
    out: dict[int, dict[str, Any]] = {}
    for lesion in tracked(current.doc):
        pts = sorted([(float(v.doc["uptake_time_h"]), float(m[lesion["id"]]["suv_max"])) for v, m in links
                      if lesion["id"] in m] + [(float(current.doc["uptake_time_h"]), float(lesion["suv_max"]))])
        for (t0, s0), (t1, s1) in itertools.pairwise(pts):
            if t0 <= at_h <= t1 and t1 > t0 and s0 > 0 and s1 > 0:
                f = (at_h - t0) / (t1 - t0)
                out[lesion["id"]] = {"uptake_time_h": at_h, "suv_max": round(math.exp((1 - f) * math.log(s0)
                                                                                  + f * math.log(s1)), 4),
                                     "from_times_h": [t0, t1], "method": "log-linear interpolation within the "
                                     "current administration's series"}
                break
    return out


def relate_scans(current_suv: Volume, current: ScanView, priors: Sequence[ScanView],
                 settings: ComparisonSettings | None = None) -> tuple[dict[str, Any], Pairing | None, ScanView | None]:
    """({"comparison": ..., "dosimetry": ...} as they apply, the pairing the tracking UIDs follow, and the
    prior scan of the comparison). `priors` are earlier scans of the same patient, any order."""
    settings = settings or ComparisonSettings()
    gate = settings.thresholds.match_gate_mm
    affine = settings.registration == "affine"
    mine = current.administration
    same = [p for p in priors if same_administration(p.administration, mine)]
    other = [p for p in priors if not same_administration(p.administration, mine)]
    sections: dict[str, Any] = {}
    latest: tuple[datetime, Pairing] | None = None
    compared: ScanView | None = None
    pairings = [(p, pair_scans(p, current, gate, affine)) for p in same]
    if other:
        compared = max(other, key=lambda p: p.doc["reference_datetime"])
        pairing = pair_scans(compared, current, gate, affine)
        matched = matched_uptake_values(current, pairings, float(compared.doc.get("uptake_time_h") or 0.0))
        sections["comparison"] = compare_scans(current_suv, current, compared, pairing, settings, matched)
        latest = (datetime.fromisoformat(compared.doc["reference_datetime"]), pairing)
    if same:
        sections["dosimetry"] = dosimetry_section(current, pairings, settings)
        for p, pairing in pairings:
            when = datetime.fromisoformat(p.doc["reference_datetime"])
            if latest is None or when > latest[0]:
                latest = (when, pairing)
    return sections, (latest[1] if latest else None), compared


def inherit_tracking(doc: dict[str, Any], pairing: Pairing | None) -> None:
    """A lesion matched to an earlier scan keeps that scan's tracking UID and identifier (PS3.16 TID
    1500: one tracking UID per lesion across time points; dicom-results.md)."""
    if pairing is None:
        return
    links = pairing.current_to_prior()
    for lesion in doc["lesions"]:
        prior = links.get(lesion["id"])
        if prior is not None and prior.get("tracking_uid"):
            lesion["tracking_uid"] = prior["tracking_uid"]
            lesion["tracking_id"] = prior.get("tracking_id") or f"Lesion {prior['id']}"
