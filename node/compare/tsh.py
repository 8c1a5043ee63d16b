"""The `comparison` section of results.json: two administrations of one patient (the TSH 30 vs > 100
question), lesion by lesion from the lower-TSH scan to the higher-TSH scan, whatever their order in
time. Pure over results documents, SUV volumes and a pairing (node/compare/study.py)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from node.compare.context import TshSource
from node.compare.dosimetry import I124_HALF_LIFE_H
from node.compare.matching import (
    LOST,
    REFRACTORY,
    REFRACTORY_CANDIDATES,
    RELABELLED,
    RESTORED,
    classify_pair,
    equivalent_radius_mm,
    patient_summary,
)
from node.compare.repeatability import (
    LesionNoise,
    judge_change,
    lesion_noise,
    uptake_times_differ,
    washout_allowance,
)
from node.quant.volume import Volume

if TYPE_CHECKING:
    from node.compare.study import ComparisonSettings, Pairing, ScanView

TRACKED_LABELS = ("metastasis", "remnant")


def time_point(view: ScanView, tsh: TshSource) -> dict[str, Any]:
    value, source = tsh.lookup(view.header, view.doc.get("accession_number"))
    return {"study_instance_uid": view.doc["study_instance_uid"], "accession_number": view.doc.get("accession_number"),
            "reference_datetime": view.doc["reference_datetime"], "injection_datetime": view.doc["injection_datetime"],
            "uptake_time_h": view.doc.get("uptake_time_h"),
            "injected_activity_bq": view.doc.get("injected_activity_bq"), "tsh_uiu_per_ml": value, "tsh_source": source}


def tsh_direction(points: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """From which scan to which: lower TSH -> higher TSH; unknown or equal TSH: time order, flagged."""
    tsh = [p["tsh_uiu_per_ml"] for p in points]
    if tsh[0] is not None and tsh[1] is not None and tsh[0] != tsh[1]:
        low = 0 if tsh[0] < tsh[1] else 1
        return {"from": ("prior", "current")[low], "to": ("prior", "current")[1 - low], "basis": "TSH",
                "lower_tsh_scan": ("prior", "current")[low], "higher_tsh_scan": ("prior", "current")[1 - low],
                "flagged": False}
    why = "TSH unknown" if None in tsh else "equal TSH"
    return {"from": "prior", "to": "current", "basis": f"time order ({why})", "lower_tsh_scan": None,
            "higher_tsh_scan": None, "flagged": True}


def residual_from_earlier(points: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """124I of the earlier administration still present at the later scan, physical decay only (an
    upper bound: excretion removes most of it), in MBq and as a fraction of the later scan's own
    administered activity decayed to that scan."""
    try:
        adm = [datetime.fromisoformat(p["injection_datetime"]) for p in points]
        ref = datetime.fromisoformat(points[1]["reference_datetime"])
        a_bq = [float(p["injected_activity_bq"]) for p in points]
    except (TypeError, ValueError, KeyError):
        return None
    lam = math.log(2) / I124_HALF_LIFE_H
    residual = a_bq[0] * math.exp(-lam * (ref - adm[0]).total_seconds() / 3600.0)
    own = a_bq[1] * math.exp(-lam * (ref - adm[1]).total_seconds() / 3600.0)
    return {"residual_124i_mbq_upper_bound": round(residual / 1e6, 4),
            "fraction_of_own_activity_at_scan": round(residual / own, 5) if own > 0 else None,
            "model": "physical decay only from the earlier administration (an upper bound)"}


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


def _sphere_max(vol: Volume, centre_mm: np.ndarray, radius_mm: float) -> float | None:
    k, j, i = np.round(vol.lps_to_index(np.asarray(centre_mm))).astype(int)
    r = [int(np.ceil(radius_mm / s)) for s in vol.spacing[::-1]]
    box = tuple(slice(max(c - rr, 0), min(c + rr + 1, n)) for c, rr, n in zip((k, j, i), r, vol.array.shape,
                                                                              strict=True))
    block = vol.array[box]
    return float(block.max()) if block.size else None


def _voxel_mm(view: ScanView) -> tuple[float, float, float] | None:
    """(column, row, slice) spacing from the PET header, for a scan whose image is not at hand."""
    spacing = view.header.get("PixelSpacing")
    thickness = view.header.get("SpacingBetweenSlices") or view.header.get("SliceThickness")
    if spacing is None or thickness is None:
        return None
    return float(spacing[1]), float(spacing[0]), float(thickness)


def _noise_dict(n: LesionNoise | None) -> dict[str, Any] | None:
    return None if n is None else {"statistical": round(n.statistical, 4), "sampling": round(n.sampling, 4),
                                   "source": n.source}


def compare_scans(current_suv: Volume, current: ScanView, prior: ScanView, pairing: Pairing,
                  settings: ComparisonSettings | None = None,
                  matched_uptake: dict[int, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The `comparison` section: each lesion's values at both scans, its change from the lower- to the
    higher-TSH scan against its own repeatability limits, and its trial category.

    `matched_uptake`: {current lesion id: {"suv_max": value at the prior's uptake time, ...}},
    interpolated within the current administration's own series where one exists (study.py)."""
    if settings is None:
        from node.compare.study import ComparisonSettings
        settings = ComparisonSettings()
    gate, limits, rule = settings.thresholds.match_gate_mm, settings.limits, settings.avidity
    points = [time_point(prior, settings.tsh), time_point(current, settings.tsh)]
    direction = tsh_direction(points)
    forward = direction["from"] == "prior"  # lower (or, flagged, earlier) scan is the prior
    soft = [prior.doc.get("reference_soft_tissue_suv"), current.doc.get("reference_soft_tissue_suv")]
    vols = [prior.suv, current.suv if current.suv is not None else current_suv]
    voxels = [_voxel_mm(prior), _voxel_mm(current)]
    times = [p["uptake_time_h"] for p in points]
    matched_uptake = matched_uptake or {}
    differ = None not in times and uptake_times_differ(times[0], times[1], limits.uptake_time_tolerance)
    rows = []
    for m in pairing.matches:
        a = pairing.prior_lesions[m.first] if m.first is not None else None
        b = pairing.current_lesions[m.second] if m.second is not None else None
        avid = [rule.is_avid(les, soft[n]) if les is not None else None for n, les in enumerate((a, b))]
        residual = None
        if a is not None and b is None:
            # Gone from the current scan: report what is at the mapped place (SUVmax within the
            # lesion's radius + 5 mm), so "lost" rests on a measurement.
            residual = _sphere_max(current_suv, pairing.mapped_mm[m.first], equivalent_radius_mm(a["volume_ml"]) + 5.0)
        verdict, tsh_change = None, None
        if a is not None and b is not None:
            noise = [lesion_noise(les, vols[n], voxels[n], soft[n], limits) for n, les in enumerate((a, b))]
            suv = [float(a["suv_max"]), float(b["suv_max"])]
            matched = matched_uptake.get(b["id"]) if differ else None
            if matched is not None:
                suv[1] = float(matched["suv_max"])
            allowance = (0.0, 0.0) if matched is not None or None in times else \
                washout_allowance(times[0], times[1], limits)
            order = (0, 1) if forward else (1, 0)
            allowance = allowance if forward else (-allowance[1], -allowance[0])
            verdict = judge_change(suv[order[0]], suv[order[1]], noise[order[0]], noise[order[1]], limits, allowance)
            tsh_change = {
                "suv_max": [round(suv[order[0]], 4), round(suv[order[1]], 4)],
                "relative_change": round(verdict.relative_change, 4) if math.isfinite(verdict.relative_change)
                else None,
                "limits": [round(verdict.limits[0], 4), round(verdict.limits[1], 4)],
                "ci95": [round(v, 4) for v in verdict.ci95] if verdict.ci95 else None,
                "verdict": verdict.verdict, "noise": [_noise_dict(noise[order[0]]), _noise_dict(noise[order[1]])],
                "washout_allowance_log": [round(allowance[0], 4), round(allowance[1], 4)],
                "matched_uptake": matched,
            }
        lower, higher = (avid[0], avid[1]) if forward else (avid[1], avid[0])
        category = classify_pair(lower, higher, lower_is_earlier=forward,
                                 change=verdict.verdict if verdict else None)
        # A focus labelled a lesion in one scan and physiological uptake at the same place in the
        # other is a labelling difference to review, not a change of iodine avidity.
        relabelled = None
        if b is None and a is not None:
            relabelled = _same_place(pairing.mapped_mm[m.first], a["volume_ml"],
                                     [(les, les["centroid_mm"]) for les in current.doc["lesions"]
                                      if les["label"] not in TRACKED_LABELS], gate)
        elif a is None and b is not None:
            relabelled = _same_place(b["centroid_mm"], b["volume_ml"], pairing.untracked_prior, gate)
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
            "detection": [les.get("detection", "pet") if les else None for les in (a, b)],
        }
        for key in ("suv_max", "suv_peak", "volume_ml", "percent_injected_activity", "lesion_to_background"):
            row[key] = pair(key)
            row[f"absolute_change_{key}"], row[f"relative_change_{key}"] = change(key)
        row["iodine_avid"] = [None if v is None else bool(v) for v in avid]
        row["tsh_change"] = tsh_change
        row["uptake_time_h_prior"], row["uptake_times_differ"] = times[0], differ
        row["residual_suv_max_at_prior_site"] = residual
        if relabelled is not None:
            row["label_in_other_scan"] = relabelled["label"]
        rows.append(row)
    rows.sort(key=lambda r: (r["current_id"] is None, r["current_id"] or 0, r["prior_id"] or 0))
    higher = 1 if forward else 0
    # Avidity at the higher TSH: lesions present there, and lesions lost since an avid earlier focus
    # when the higher-TSH scan is the later one.
    avid_at_higher = [bool(r["iodine_avid"][higher]) for r in rows if r["suv_max"][higher] is not None
                      or (r["category"] == LOST and higher == 1)]
    warnings = []
    if direction["flagged"]:
        warnings.append(f"{direction['basis']}: compared in time order (prior -> current); 'avidity restored' "
                        "and 'avid only at lower TSH' then mean 'at the later' / 'at the earlier scan'")
    if differ:
        warnings.append(f"uptake times differ by more than {100 * limits.uptake_time_tolerance:g} %: "
                        f"{times[0]:g} h (prior) vs {times[1]:g} h (current); "
                        + ("matched-uptake values interpolated in the current administration's series are "
                           "used where available; otherwise " if matched_uptake else "")
                        + "the change limits include what washout alone can cause between the two times")
    if any(r["tsh_change"] and any(n and n["source"] != "image" for n in r["tsh_change"]["noise"]) for r in rows):
        warnings.append("image noise of a scan was not measured (no image at hand): an assumed CoV of "
                        f"{limits.fallback_noise_cov:g} at soft tissue was used for its limits")
    labels = {"prior": points[0], "current": points[1]}
    summary_text = (f"from the {direction['from']} scan (TSH {_fmt_tsh(labels[direction['from']])}) to the "
                    f"{direction['to']} scan (TSH {_fmt_tsh(labels[direction['to']])}), by {direction['basis']}")
    return {
        "prior_study_instance_uid": prior.doc["study_instance_uid"],
        "kind": "separate administrations",
        "time_points": points,
        "tsh_uiu_per_ml": {"prior": points[0]["tsh_uiu_per_ml"], "current": points[1]["tsh_uiu_per_ml"]},
        "direction": {**direction, "text": summary_text},
        "uptake_times_differ": differ,
        "residual_from_earlier_administration": residual_from_earlier(points),
        "registration": pairing.registration,
        "thresholds": {"gained": limits.gained, "reduced": limits.reduced, "match_gate_mm": gate},
        "change_limits": limits.describe(),
        "avidity_rule": rule.describe(),
        "warnings": warnings,
        "lesions": rows,
        "summary": {**patient_summary([r["category"] for r in rows], avid_at_higher),
                    "higher_tsh_scan": direction["higher_tsh_scan"] or
                    "unknown (TSH missing or equal): the current scan is used",
                    "direction": summary_text},
        "refractory_candidates": [r["prior_id"] for r in rows if r["category"] in REFRACTORY_CANDIDATES
                                  and r["prior_id"] is not None],
        "refractory": [{"prior_id": r["prior_id"], "current_id": r["current_id"], "detection": r["detection"]}
                       for r in rows if r["category"] == REFRACTORY],
        "avidity_restored": [{"prior_id": r["prior_id"], "current_id": r["current_id"]}
                             for r in rows if r["category"] == RESTORED],
    }


def _fmt_tsh(point: dict[str, Any]) -> str:
    return f"{point['tsh_uiu_per_ml']:g}" if point["tsh_uiu_per_ml"] is not None else "unknown"
