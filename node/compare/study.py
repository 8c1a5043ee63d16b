"""Compare a quantified scan with an earlier one of the same patient (results.json sections
`comparison` and, for one administration imaged twice, `dosimetry`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from node.compare.context import (
    DEFAULT_TSH_PATTERN,
    DEFAULT_TSH_TAG,
    Administration,
    read_tsh,
    same_administration,
)
from node.compare.dosimetry import lesion_dose
from node.compare.matching import LOST, ChangeThresholds, classify_change, match_lesions, patient_summary
from node.compare.register import register_rigid
from node.quant.study import SeriesResult
from node.quant.volume import Volume, assemble, resample_like


@dataclass(frozen=True)
class ComparisonSettings:
    """`comparison` in the configuration (documented defaults)."""

    prior_window_days: float = 90.0
    tsh_tag: str = DEFAULT_TSH_TAG
    tsh_pattern: str = DEFAULT_TSH_PATTERN
    thresholds: ChangeThresholds = field(default_factory=ChangeThresholds)
    dose_activities_gbq: tuple[float, ...] = (3.7, 7.4)
    # Ho et al., NEJM 2013: treat if the predicted lesion dose is >= 20 Gy; Maxon 1983/1992:
    # >= 80-85 Gy for nodal metastases (shared/reference/iodine124.md)
    treat_threshold_gy: float = 20.0
    nodal_response_gy: float = 80.0


def ct_on_coarse_grid(ct_paths: Sequence[Path], spacing_mm: float = 4.0) -> Volume:
    """A CT series on a grid of its own extent and orientation with `spacing_mm` voxels (enough for a
    rigid registration, and small)."""
    ct, _ = assemble([pydicom.dcmread(p, stop_before_pixels=True) for p in ct_paths], "CT", dtype=np.int16)
    extent = np.array(ct.array.shape[::-1]) * np.array(ct.spacing)
    shape = tuple(int(max(2, round(e / spacing_mm))) for e in extent[::-1])
    grid = Volume(np.empty(shape, np.uint8), ct.origin, (spacing_mm,) * 3, ct.direction)
    return resample_like(ct, grid, -1000.0)


def _sphere_max(vol: Volume, centre_mm: np.ndarray, radius_mm: float) -> float | None:
    k, j, i = np.round(vol.lps_to_index(np.asarray(centre_mm))).astype(int)
    r = [int(np.ceil(radius_mm / s)) for s in vol.spacing[::-1]]
    box = tuple(slice(max(c - rr, 0), min(c + rr + 1, n)) for c, rr, n in zip((k, j, i), r, vol.array.shape,
                                                                              strict=True))
    block = vol.array[box]
    return float(block.max()) if block.size else None


def compare_scans(current: SeriesResult, current_doc: dict[str, Any], prior_doc: dict[str, Any],
                  prior_ct_on_grid: Volume | None, current_ct_on_grid: Volume | None, prior_pet_header: Any,
                  settings: ComparisonSettings | None = None) -> dict[str, Any]:
    """The `comparison` section (and `dosimetry` inside it for one administration)."""
    settings = settings or ComparisonSettings()
    thresholds = settings.thresholds
    prior_lesions = [les for les in prior_doc["lesions"] if les["label"] in ("metastasis", "remnant")]
    current_lesions = [les for les in current_doc["lesions"] if les["label"] in ("metastasis", "remnant")]
    registration: dict[str, Any] = {"method": "none (no CT): scanner coordinates"}
    p1 = np.array([les["centroid_mm"] for les in prior_lesions], float).reshape(-1, 3)
    mapped = p1
    if prior_ct_on_grid is not None and current_ct_on_grid is not None and len(p1):
        reg = register_rigid(current_ct_on_grid, prior_ct_on_grid)
        mapped = reg.scan1_to_scan2(p1)
        registration = {"method": "rigid CT-CT, Mattes mutual information", "metric": reg.metric,
                        "iterations": reg.iterations}
    p2 = np.array([les["centroid_mm"] for les in current_lesions], float).reshape(-1, 3)
    matches = match_lesions(mapped, p2, thresholds.match_gate_mm)
    rows = []
    for m in matches:
        a = prior_lesions[m.first] if m.first is not None else None
        b = current_lesions[m.second] if m.second is not None else None
        if a is not None and b is None:
            # Gone from the current scan: report what is at the mapped place (SUVmax within the
            # lesion's radius + 5 mm), so "lost" rests on a measurement.
            radius = (3 * a["volume_ml"] * 1000 / (4 * np.pi)) ** (1 / 3) + 5.0
            residual = _sphere_max(current.suv_volume, mapped[m.first], radius)
        else:
            residual = None
        suv1, suv2 = (a["suv_max"] if a else None), (b["suv_max"] if b else None)
        category = classify_change(suv1, suv2, bool(a and a["iodine_avid"]), bool(b and b["iodine_avid"]), thresholds)

        def pair(key: str, a: dict | None = a, b: dict | None = b) -> list[float | None]:
            return [a[key] if a else None, b[key] if b else None]

        rows.append({
            "prior_id": a["id"] if a else None, "current_id": b["id"] if b else None,
            "prior_centroid_mapped_mm": [round(float(v), 2) for v in mapped[m.first]] if m.first is not None else None,
            "match_distance_mm": round(m.distance_mm, 2) if m.distance_mm is not None else None,
            "category": category,
            "suv_max": pair("suv_max"), "suv_peak": pair("suv_peak"), "volume_ml": pair("volume_ml"),
            "percent_injected_activity": pair("percent_injected_activity"),
            "lesion_to_background": pair("lesion_to_background"), "iodine_avid": pair("iodine_avid"),
            "relative_change_suv_max": (round((suv2 - suv1) / suv1, 4) if suv1 and suv2 is not None else None),
            "residual_suv_max_at_prior_site": residual,
        })
    prior_admin = Administration(datetime.fromisoformat(prior_doc["injection_datetime"]),
                                 float(prior_doc["injected_activity_bq"]))
    current_admin = Administration(datetime.fromisoformat(current_doc["injection_datetime"]),
                                   float(current_doc["injected_activity_bq"]))
    one_administration = same_administration(prior_admin, current_admin)
    section: dict[str, Any] = {
        "prior_study_instance_uid": prior_doc["study_instance_uid"],
        "kind": "same administration" if one_administration else "separate administrations",
        "tsh_uiu_per_ml": {"prior": read_tsh(prior_pet_header, settings.tsh_tag, settings.tsh_pattern),
                           "current": read_tsh(current.pet_headers[0], settings.tsh_tag, settings.tsh_pattern)},
        "registration": registration,
        "thresholds": {"gained": thresholds.gained, "reduced": thresholds.reduced,
                       "match_gate_mm": thresholds.match_gate_mm},
        "lesions": rows,
        "summary": patient_summary([r["category"] for r in rows],
                                   [bool(r["iodine_avid"][1]) for r in rows if r["category"] != "new"]
                                   + [True for r in rows if r["category"] == "new"]),
        "refractory_candidates": [r["prior_id"] for r in rows if r["category"] == LOST],
    }
    if one_administration:
        section["dosimetry"] = _dosimetry(rows, prior_doc, current_doc, settings)
    return section


def _dosimetry(rows: list[dict[str, Any]], prior_doc: dict[str, Any], current_doc: dict[str, Any],
               settings: ComparisonSettings) -> dict[str, Any]:
    t = [float(prior_doc["uptake_time_h"]), float(current_doc["uptake_time_h"])]
    out = []
    for r in rows:
        ia = r["percent_injected_activity"]
        if None in ia or any(v <= 0 for v in ia):
            continue
        volume = max(v for v in r["volume_ml"] if v is not None)
        try:
            dose = lesion_dose(t, ia, volume)
        except ValueError as exc:
            out.append({"prior_id": r["prior_id"], "current_id": r["current_id"], "error": str(exc)})
            continue
        predicted = {f"{a:g}_gbq": round(dose.dose_gy(a), 2) for a in settings.dose_activities_gbq}
        reference_gy = dose.dose_gy(settings.dose_activities_gbq[0])
        out.append({
            "prior_id": r["prior_id"], "current_id": r["current_id"], "times_h": t, "percent_injected_activity": ia,
            "mass_g": dose.mass_g, "biological_half_life_h": round(dose.biological_half_life_h, 2),
            "effective_half_life_131_h": round(dose.effective_half_life_131_h, 2),
            "time_integrated_activity_h": dose.tia_h, "gy_per_gbq": round(dose.gy_per_gbq, 3),
            "predicted_dose_gy": predicted,
            "reaches_treat_threshold": reference_gy >= settings.treat_threshold_gy,
            "reaches_nodal_response_dose": reference_gy >= settings.nodal_response_gy,
        })
    return {"method": "mono-exponential retention, 124I->131I half-life scaling, local deposition "
                      "(D = 0.11066 A~[MBq h] / m[g])",
            "thresholds_gy": {"treat": settings.treat_threshold_gy, "nodal_response": settings.nodal_response_gy,
                              "at_activity_gbq": settings.dose_activities_gbq[0]},
            "lesions": out}


def comparison_settings_from_config(section: Any) -> ComparisonSettings:
    return ComparisonSettings(
        prior_window_days=section.prior_window_days, tsh_tag=section.tsh.tag, tsh_pattern=section.tsh.pattern,
        thresholds=ChangeThresholds(gained=section.gained, reduced=section.reduced,
                                    match_gate_mm=section.match_gate_mm),
        dose_activities_gbq=tuple(section.dose_activities_gbq), treat_threshold_gy=section.treat_threshold_gy,
        nodal_response_gy=section.nodal_response_gy)
