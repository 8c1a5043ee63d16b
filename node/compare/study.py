"""Relate a quantified scan to earlier scans of the same patient: the `comparison` section (two
administrations, the TSH question) and the `dosimetry` section (one administration imaged at
several times) of results.json. Pure over results documents, headers and coarse CT volumes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from node.compare.context import Administration, TshSource, same_administration
from node.compare.dosimetry import lesion_dose
from node.compare.matching import (
    LOST,
    RELABELLED,
    ChangeThresholds,
    Match,
    classify_change,
    equivalent_radius_mm,
    match_lesions,
    patient_summary,
)
from node.compare.priors import PriorQuery
from node.compare.register import register_rigid
from node.quant.volume import Volume, assemble, resample_like

TRACKED_LABELS = ("metastasis", "remnant")


@dataclass(frozen=True)
class ComparisonSettings:
    """`comparison` in the configuration (documented defaults)."""

    prior_window_days: float = 90.0
    tsh: TshSource = field(default_factory=TshSource)
    thresholds: ChangeThresholds = field(default_factory=ChangeThresholds)
    dose_activities_gbq: tuple[float, ...] = (3.7, 7.4)
    # Ho et al., NEJM 2013: treat if the predicted lesion dose is >= 20 Gy; Maxon 1983/1992:
    # >= 80-85 Gy for nodal metastases (docs/science.md)
    treat_threshold_gy: float = 20.0
    nodal_response_gy: float = 80.0
    s_values: tuple[tuple[float, float], ...] | None = None  # (sphere mass g, Gy per MBq h)
    query: PriorQuery | None = None  # a PACS to ask for earlier studies
    registration: str = "rigid"  # or "affine": a 12-parameter stage after the rigid one


@dataclass(frozen=True)
class ScanView:
    """One quantified scan as the comparison sees it: its results.json, first PET header and CT on a
    coarse grid (None without CT)."""

    doc: dict[str, Any]
    header: Dataset
    ct: Volume | None = None
    pet: Volume | None = None  # SUV on a coarse grid: the registration fallback without CT

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
    ct, _ = assemble([pydicom.dcmread(p, stop_before_pixels=True) for p in ct_paths], "CT", dtype=np.int16)
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


def _same_place(centre_mm: Any, volume_ml: float, candidates: list[tuple[dict[str, Any], Any]],
                gate_mm: float) -> dict[str, Any] | None:
    """The nearest candidate focus within the gate or overlapping (equivalent spheres), or None."""
    best, best_d = None, float("inf")
    for les, where in candidates:
        d = float(np.linalg.norm(np.subtract(where, centre_mm)))
        if (d <= gate_mm or d < equivalent_radius_mm(volume_ml) + equivalent_radius_mm(les["volume_ml"])) \
                and d < best_d:
            best, best_d = les, d
    return best


def time_point(view: ScanView, tsh: TshSource) -> dict[str, Any]:
    value, source = tsh.lookup(view.header, view.doc.get("accession_number"))
    return {"study_instance_uid": view.doc["study_instance_uid"], "accession_number": view.doc.get("accession_number"),
            "reference_datetime": view.doc["reference_datetime"], "injection_datetime": view.doc["injection_datetime"],
            "uptake_time_h": view.doc.get("uptake_time_h"), "tsh_uiu_per_ml": value, "tsh_source": source}


def _sphere_max(vol: Volume, centre_mm: np.ndarray, radius_mm: float) -> float | None:
    k, j, i = np.round(vol.lps_to_index(np.asarray(centre_mm))).astype(int)
    r = [int(np.ceil(radius_mm / s)) for s in vol.spacing[::-1]]
    box = tuple(slice(max(c - rr, 0), min(c + rr + 1, n)) for c, rr, n in zip((k, j, i), r, vol.array.shape,
                                                                              strict=True))
    block = vol.array[box]
    return float(block.max()) if block.size else None


def compare_scans(current_suv: Volume, current: ScanView, prior: ScanView, pairing: Pairing,
                  settings: ComparisonSettings | None = None) -> dict[str, Any]:
    """The `comparison` section: each lesion's values at both scans, change and category."""
    settings = settings or ComparisonSettings()
    thresholds = settings.thresholds
    rows = []
    for m in pairing.matches:
        a = pairing.prior_lesions[m.first] if m.first is not None else None
        b = pairing.current_lesions[m.second] if m.second is not None else None
        residual = None
        if a is not None and b is None:
            # Gone from the current scan: report what is at the mapped place (SUVmax within the
            # lesion's radius + 5 mm), so "lost" rests on a measurement.
            radius = equivalent_radius_mm(a["volume_ml"]) + 5.0
            residual = _sphere_max(current_suv, pairing.mapped_mm[m.first], radius)
        suv1, suv2 = (a["suv_max"] if a else None), (b["suv_max"] if b else None)
        category = classify_change(suv1, suv2, bool(a and a["iodine_avid"]), bool(b and b["iodine_avid"]), thresholds)
        # A focus labelled a lesion in one scan and physiological uptake at the same place in the
        # other is a labelling difference to review, not a change of iodine avidity.
        relabelled = None
        if b is None and a is not None:
            relabelled = _same_place(pairing.mapped_mm[m.first], a["volume_ml"],
                                     [(les, les["centroid_mm"]) for les in current.doc["lesions"]
                                      if les["label"] not in TRACKED_LABELS], thresholds.match_gate_mm)
        elif a is None and b is not None:
            relabelled = _same_place(b["centroid_mm"], b["volume_ml"], pairing.untracked_prior,
                                     thresholds.match_gate_mm)
        if relabelled is not None:
            category = RELABELLED

        def pair(key: str, a: dict | None = a, b: dict | None = b) -> list[Any]:
            return [a.get(key) if a else None, b.get(key) if b else None]

        def change(key: str, a: dict | None = a, b: dict | None = b) -> tuple[float | None, float | None]:
            v1, v2 = (a.get(key) if a else None), (b.get(key) if b else None)
            if v1 is None or v2 is None:
                return None, None
            return round(v2 - v1, 6), (round((v2 - v1) / v1, 4) if v1 else None)

        row: dict[str, Any] = {
            "prior_id": a["id"] if a else None, "current_id": b["id"] if b else None,
            "tracking_uid": a.get("tracking_uid") if a else None,
            "prior_centroid_mapped_mm": ([round(float(v), 2) for v in pairing.mapped_mm[m.first]]
                                         if m.first is not None else None),
            "match_distance_mm": round(m.distance_mm, 2) if m.distance_mm is not None else None,
            "category": category,
            "site": (b or a or {}).get("site"),
        }
        for key in ("suv_max", "suv_peak", "volume_ml", "percent_injected_activity", "lesion_to_background"):
            row[key] = pair(key)
            row[f"absolute_change_{key}"], row[f"relative_change_{key}"] = change(key)
        row["iodine_avid"] = pair("iodine_avid")
        row["residual_suv_max_at_prior_site"] = residual
        if relabelled is not None:
            row["label_in_other_scan"] = relabelled["label"]
        rows.append(row)
    rows.sort(key=lambda r: (r["current_id"] is None, r["current_id"] or 0, r["prior_id"] or 0))
    points = [time_point(prior, settings.tsh), time_point(current, settings.tsh)]
    # The question is avidity at the higher TSH: the scan whose TSH is higher, or the current one
    # (usually the second, stimulated scan) when a TSH is unknown; the summary names which.
    tsh1, tsh2 = points[0]["tsh_uiu_per_ml"], points[1]["tsh_uiu_per_ml"]
    higher = 0 if tsh1 is not None and tsh2 is not None and tsh1 > tsh2 else 1
    avid_at_higher = [bool(r["iodine_avid"][higher]) for r in rows if r["suv_max"][higher] is not None
                      or r["category"] == LOST]
    return {
        "prior_study_instance_uid": prior.doc["study_instance_uid"],
        "kind": "separate administrations",
        "time_points": points,
        "tsh_uiu_per_ml": {"prior": points[0]["tsh_uiu_per_ml"], "current": points[1]["tsh_uiu_per_ml"]},
        "registration": pairing.registration,
        "thresholds": {"gained": thresholds.gained, "reduced": thresholds.reduced,
                       "match_gate_mm": thresholds.match_gate_mm},
        "lesions": rows,
        "summary": {**patient_summary([r["category"] for r in rows], avid_at_higher),
                    "higher_tsh_scan": ("current" if higher else "prior") if tsh1 is not None and tsh2 is not None
                    else "unknown (TSH missing): the current scan is used"},
        "refractory_candidates": [r["prior_id"] for r in rows if r["category"] == LOST],
    }


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
        try:
            dose = lesion_dose(times, retention, volume_ml, s_table=settings.s_values)
        except ValueError as exc:
            row["error"] = str(exc)
            out.append(row)
            continue
        reference_gy = dose.dose_gy(settings.dose_activities_gbq[0])
        row.update({
            "model": dose.model, "mass_g": round(dose.mass_g, 4), "s_value": dose.s_value_source,
            "equivalent_diameter_mm": round(10.0 * (6.0 * volume_ml / np.pi) ** (1 / 3), 1),
            # Partial-volume losses matter below 2-3 x FWHM (Soret, Bacharach, Buvat, J Nucl Med 2007;
            # 48:932): below 2 x FWHM the mass, hence the dose, is flagged as uncertain.
            "mass_source": mass_source,
            "mass_reliable": bool(fits) and all(f["diameter_mm"] >= 2 * f["fwhm_mm"] for f in resolved),
            "biological_half_life_h": round(dose.biological_half_life_h, 2),
            "effective_half_life_131_h": round(dose.effective_half_life_131_h, 2),
            "time_integrated_activity_h": dose.tia_h, "gy_per_gbq": round(dose.gy_per_gbq, 3),
            "predicted_dose_gy": {f"{a:g}_gbq": round(dose.dose_gy(a), 2) for a in settings.dose_activities_gbq},
            "reaches_treat_threshold": reference_gy >= settings.treat_threshold_gy,
            "reaches_nodal_response_dose": reference_gy >= settings.nodal_response_gy,
        })
        out.append(row)
    return {
        "method": "retention from %IA decay-corrected to administration (spill-out recovered); "
                  "mono-exponential, or uptake + washout with >= 3 time points; 124I->131I half-life scaling; "
                  + ("sphere S-value table" if settings.s_values else
                     "local deposition (D = 0.11066 A~[MBq h] / m[g])"),
        "time_points": [time_point(v, settings.tsh) for v in views],
        "thresholds_gy": {"treat": settings.treat_threshold_gy, "nodal_response": settings.nodal_response_gy,
                          "at_activity_gbq": settings.dose_activities_gbq[0]},
        "lesions": out,
    }


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
    if other:
        compared = max(other, key=lambda p: p.doc["reference_datetime"])
        pairing = pair_scans(compared, current, gate, affine)
        sections["comparison"] = compare_scans(current_suv, current, compared, pairing, settings)
        latest = (datetime.fromisoformat(compared.doc["reference_datetime"]), pairing)
    if same:
        pairings = [(p, pair_scans(p, current, gate, affine)) for p in same]
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


def comparison_settings_from_config(section: Any, node_ae_title: str = "IODINE_NODE") -> ComparisonSettings:
    q = section.priors.query
    query = PriorQuery(q.ae_title, q.host, q.port, q.calling_ae_title or node_ae_title, q.retrieve,
                       q.move_destination or node_ae_title, q.timeout_s) if q is not None else None
    return ComparisonSettings(query=query, registration=section.registration,
        prior_window_days=section.prior_window_days,
        tsh=TshSource(section.tsh.tag, section.tsh.pattern,
                      Path(section.tsh.sidecar_dir) if section.tsh.sidecar_dir else None),
        thresholds=ChangeThresholds(gained=section.gained, reduced=section.reduced,
                                    match_gate_mm=section.match_gate_mm),
        dose_activities_gbq=tuple(section.dose_activities_gbq), treat_threshold_gy=section.treat_threshold_gy,
        nodal_response_gy=section.nodal_response_gy,
        s_values=tuple((p.mass_g, p.gy_per_mbq_h) for p in section.s_values) if section.s_values else None)
