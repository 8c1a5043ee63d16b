"""The results document (results.json, schema iodine-node/results/v1: docs/results-schema.md) and the
lesion table (lesions.csv), built from the quantification's models. Pure: node.output.files writes them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime
from typing import Any

import numpy as np

import node
from node.quant.models import CT_DISPLAY, SeriesResult
from node.quant.study import QuantSettings
from node.quant.suv import SuvError
from node.quant.suvtypes import ratio_to_bw

RESULTS_SCHEMA = "iodine-node/results/v1"


def _iso(t: datetime | None) -> str | None:
    return t.isoformat() if t else None


def _round(v: float | None, n: int = 4) -> float | None:
    return None if v is None or not np.isfinite(v) else round(float(v), n)


def results_document(result: SeriesResult, settings: QuantSettings, notes: Sequence[str] = ()) -> dict[str, Any]:
    """results.json, schema iodine-node/results/v1 (docs/results-schema.md)."""
    h = result.pet_headers[0]
    calc = result.suv
    suv_type = settings.suv.report_type
    try:
        type_ratio: float | None = ratio_to_bw(calc.patient, suv_type)
    except SuvError as exc:  # e.g. SUL without height or sex: said, SUVbw still stands
        type_ratio = None
        notes = [*notes, f"SUV type {suv_type} not reported: {exc}"]
    lesions = []
    for les in result.lesions:
        lesions.append({
            "id": les.id, "label": les.label.value, "detection": les.detection.value,
            "ct_diameter_mm": les.ct_diameter_mm, "site": les.site.value, "centroid_mm": list(les.centroid_mm),
            "volume_ml": _round(les.volume_ml), "suv_max": _round(les.suv_max), "suv_peak": _round(les.suv_peak),
            "suv_mean": _round(les.suv_mean), "total_lesion_uptake": _round(les.total_lesion_uptake),
            "activity_mbq": _round(les.activity_mbq, 6),
            "activity_mbq_at_administration": _round(les.activity_mbq_at_administration, 6),
            "percent_injected_activity": _round(les.percent_injected_activity, 6),
            "sphere_fit": None if les.sphere is None else {
                "diameter_mm": _round(2 * les.sphere.radius_mm, 2), "volume_ml": _round(les.sphere.volume_ml),
                "fwhm_mm": _round(2.3548 * les.sphere.sigma_mm, 2), "suv": _round(les.sphere.concentration),
                "rms_residual": _round(les.sphere.rms_residual), "resolved": les.sphere.resolved},
            "activity_recovered_mbq": _round(les.activity_recovered_mbq, 6),
            "percent_injected_activity_recovered": _round(les.percent_injected_activity_recovered, 6),
            "lesion_to_background": _round(les.lesion_to_background), "background_suv": _round(les.background_suv),
            "mean_hu": _round(les.mean_hu, 1), "iodine_avid": les.iodine_avid, "voxels": les.voxels,
            "partial_volume_corrected": None if les.partial_volume is None else asdict(les.partial_volume),
            "recovery": None if les.recovery is None else {**asdict(les.recovery),
                                                           "size_source": les.recovery.size_source.value},
            "suv_typed": None if type_ratio is None else {
                "type": suv_type, "suv_max": _round(les.suv_max * type_ratio),
                "suv_peak": _round(les.suv_peak * type_ratio), "suv_mean": _round(les.suv_mean * type_ratio)},
            "tracking_uid": None, "tracking_id": None,  # settled when the result objects are built
        })
    return {
        "schema": RESULTS_SCHEMA,
        "software": {"name": "iodine-node", "version": node.__version__},
        "study_instance_uid": str(h.get("StudyInstanceUID", "")),
        "pet_series_instance_uid": result.pet_series_uid,
        "ct_series_instance_uid": result.ct_series_uid,
        "patient_id": str(h.get("PatientID", "")),
        "accession_number": str(h.get("AccessionNumber", "")),
        "injection_datetime": _iso(calc.administration),
        "reference_datetime": _iso(calc.reference),
        "uptake_time_h": _round(calc.uptake_time_s / 3600 if calc.uptake_time_s is not None else None),
        "injected_activity_bq": calc.injected_activity_bq,
        "radionuclide": calc.nuclide,
        "half_life_s": calc.half_life_s,
        "suv_type": suv_type, "suv_type_ratio_to_bw": _round(type_ratio, 8),
        "suv": {"type": "BW", "units_in": calc.units, "decay_correction": calc.decay_correction,
                "factor_g_per_unit": _round(calc.factors[0], 12) if len(set(calc.factors)) == 1 else None,
                "factors_per_slice": None if len(set(calc.factors)) == 1 else [float(f) for f in calc.factors],
                "derivation": list(calc.derivation), "warnings": list(calc.warnings),
                "weight_kg": calc.patient.weight_kg, "height_m": calc.patient.height_m,
                "other_normalisations": calc.other_normalisations},
        "reference_soft_tissue_suv": _round(result.reference_suv),
        "settings": {"segmentation": settings.segmentation.__dict__, "detection": settings.detection.__dict__,
                     "avid": settings.avid.__dict__, "activity_margin_mm": settings.activity_margin_mm},
        "seconds": {k: round(v, 3) for k, v in result.seconds.items()},
        "warnings": list(result.warnings) + list(notes),
        "lesions": lesions,
    }


CSV_COLUMNS = ("id", "label", "site", "centroid_x_mm", "centroid_y_mm", "centroid_z_mm", "volume_ml", "suv_max",
               "suv_peak", "suv_mean", "total_lesion_uptake", "activity_mbq", "percent_injected_activity",
               "lesion_to_background", "background_suv", "mean_hu", "iodine_avid", "detection", "ct_diameter_mm")


def csv_rows(document: dict[str, Any]) -> list[list[Any]]:
    """lesions.csv: the header row, then one row per lesion of a results document."""
    rows: list[list[Any]] = [list(CSV_COLUMNS)]
    for les in document["lesions"]:
        x, y, z = les["centroid_mm"]
        shown = CT_DISPLAY if les.get("detection", "pet") == "ct" else les["label"]
        rows.append([les["id"], shown, les["site"], x, y, z, les["volume_ml"], les["suv_max"],
                     les["suv_peak"], les["suv_mean"], les["total_lesion_uptake"], les["activity_mbq"],
                     les["percent_injected_activity"], les["lesion_to_background"], les["background_suv"],
                     les["mean_hu"], les["iodine_avid"], les.get("detection", "pet"), les.get("ct_diameter_mm")])
    return rows
