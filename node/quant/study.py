"""Quantify a study: choose its PET series and CT, and run load -> SUV -> detect -> measure.

Shared by `iodine-node process` (offline) and the listener's `quantify` job.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset

import node
from node.quant.ctlesions import DISPLAY as CT_DISPLAY
from node.quant.ctlesions import add_ct_lesions
from node.quant.ctnodules import CtNodule, find_ct_nodules
from node.quant.detect import DetectionSettings, SegmentationSettings, detect_foci
from node.quant.landmarks import Landmarks, find_landmarks
from node.quant.measure import (
    DEFAULT_ACTIVITY_MARGIN_MM,
    ActivityScale,
    AvidSettings,
    Lesion,
    measure_lesions,
    soft_tissue_reference,
)
from node.quant.recovery import DEFAULT_CURVE_MM, with_recovery
from node.quant.suv import SuvCalculation, SuvError, SuvSettings, compute_suv
from node.quant.suvtypes import ratio_to_bw
from node.quant.volume import Volume, assemble, resample_like

RESULTS_SCHEMA = "iodine-node/results/v1"
DEFAULT_EXCLUDE = (r"(?i)\bMIP\b", r"(?i)\bNAC\b", r"(?i)non[- ]?AC\b", r"(?i)uncorrected")


class StudyError(ValueError):
    """A study that cannot be quantified, with the reason."""


@dataclass(frozen=True)
class QuantSettings:
    suv: SuvSettings = field(default_factory=SuvSettings)
    detection: DetectionSettings = field(default_factory=DetectionSettings)
    segmentation: SegmentationSettings = field(default_factory=SegmentationSettings)
    avid: AvidSettings = field(default_factory=AvidSettings)
    recovery: tuple[tuple[float, float], ...] | None = None
    activity_margin_mm: float = DEFAULT_ACTIVITY_MARGIN_MM
    include_description: tuple[str, ...] = ()
    exclude_description: tuple[str, ...] = DEFAULT_EXCLUDE
    ct_nodules: bool = True  # solid lung nodules found on CT without a PET focus (node.quant.ctnodules)
    ct_nodule_min_diameter_mm: float = 5.0
    # Partial-volume recovery by the best size ((diameter mm, RC) points; None: off); node.quant.recovery
    recovery_curve: tuple[tuple[float, float], ...] | None = DEFAULT_CURVE_MM


@dataclass
class SeriesFiles:
    series_uid: str
    header: Dataset
    paths: list[Path] = field(default_factory=list)

    @property
    def modality(self) -> str:
        return str(self.header.get("Modality", ""))

    @property
    def description(self) -> str:
        return str(self.header.get("SeriesDescription", ""))


@dataclass(frozen=True)
class SeriesResult:
    pet_series_uid: str
    ct_series_uid: str | None
    suv: SuvCalculation
    suv_volume: Volume
    labels: np.ndarray
    lesions: list[Lesion]
    reference_suv: float
    pet_sop_uids: list[str]  # in volume (slice) order
    pet_headers: list[Dataset]
    seconds: dict[str, float]
    warnings: list[str]


def group_by_study(paths: Iterable[Path]) -> tuple[dict[str, dict[str, SeriesFiles]], list[str]]:
    """{study: {series: files}}, and the files that are not DICOM (named, not fatal)."""
    studies: dict[str, dict[str, SeriesFiles]] = {}
    skipped: list[str] = []
    for path in paths:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            study, series = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is reported and skipped
            skipped.append(f"{path}: {type(exc).__name__}: {exc}")
            continue
        entry = studies.setdefault(study, {}).setdefault(series, SeriesFiles(series, ds))
        entry.paths.append(Path(path))
    return studies, skipped


def pet_rejection(s: SeriesFiles, settings: QuantSettings) -> str | None:
    """Why a series is not a quantifiable PET series (None: it is)."""
    h = s.header
    if s.modality != "PT":
        return "not PET"
    image_type = [str(v).upper() for v in (h.get("ImageType") or [])] if not isinstance(h.get("ImageType"), str) \
        else [str(h.get("ImageType")).upper()]
    if image_type and image_type[0] == "DERIVED" and "MIP" in " ".join(image_type):
        return "a derived MIP series"
    if settings.include_description and not any(re.search(p, s.description) for p in settings.include_description):
        return f"SeriesDescription {s.description!r} matches no quantification.series.include pattern"
    for pattern in settings.exclude_description:
        if re.search(pattern, s.description):
            return f"SeriesDescription {s.description!r} matches exclude pattern {pattern!r}"
    corrected = h.get("CorrectedImage") or []
    corrected = {str(c).upper() for c in ([corrected] if isinstance(corrected, str) else corrected)}
    if "ATTN" not in corrected:
        return "not attenuation-corrected (CorrectedImage lacks ATTN)"
    if str(h.get("DecayCorrection", "")).upper() != "NONE" and "DECY" not in corrected:
        return "not decay-corrected (CorrectedImage lacks DECY)"
    return None


def select_series(series: dict[str, SeriesFiles], settings: QuantSettings) -> tuple[list[tuple[SeriesFiles,
                                                                                              SeriesFiles | None]],
                                                                                   list[str]]:
    """(PET, CT-or-None) pairs to quantify, and notes on the series passed over."""
    notes, pairs = [], []
    cts = [s for s in series.values() if s.modality == "CT"]
    for s in series.values():
        if s.modality != "PT":
            continue
        why = pet_rejection(s, settings)
        if why:
            notes.append(f"PET series {s.series_uid} ({s.description!r}) not quantified: {why}")
            continue
        for_uid = str(s.header.get("FrameOfReferenceUID", ""))
        same_for = [c for c in cts if for_uid and str(c.header.get("FrameOfReferenceUID", "")) == for_uid]
        ct = max(same_for, key=lambda c: len(c.paths)) if same_for else None
        if ct is None:
            notes.append(f"PET series {s.series_uid}: no CT with its Frame of Reference; CT-based features absent")
        pairs.append((s, ct))
    return pairs, notes


def suv_volume(pet: Sequence[Dataset], settings: SuvSettings) -> tuple[Volume, list[Dataset], SuvCalculation]:
    """(SUVbw volume, headers in slice order, the SUV calculation) of one PET series."""
    pet_vol, order = assemble(pet, f"PET series {pet[0].get('SeriesInstanceUID', '')}")
    ordered = [pet[i] for i in order]
    calc = compute_suv(ordered, settings)
    factors = np.asarray(calc.factors, np.float32)[:, None, None]
    return pet_vol.with_array(pet_vol.array * factors), ordered, calc


def suv_volume_of(pet_paths: Sequence[Path], settings: SuvSettings | None = None) -> Volume:
    return suv_volume([pydicom.dcmread(p, stop_before_pixels=True) for p in pet_paths], settings or SuvSettings())[0]


def quantify_series(pet: Sequence[Dataset], ct: Sequence[Dataset] | None, settings: QuantSettings,
                    label: str = "PET") -> SeriesResult:
    """The pure pipeline over loaded datasets."""
    seconds: dict[str, float] = {}
    warnings: list[str] = []
    nodules: list[CtNodule] = []
    t = time.perf_counter()
    suv_vol, ordered, calc = suv_volume(pet, settings.suv)
    ct_on_pet: Volume | None = None
    if ct:
        ct_vol, _ = assemble(ct, f"CT series {ct[0].get('SeriesInstanceUID', '')}", dtype=np.int16)
        ct_on_pet = resample_like(ct_vol, suv_vol, -1000.0)
        if settings.ct_nodules:
            t_ct = time.perf_counter()
            nodules = find_ct_nodules(ct_vol, settings.ct_nodule_min_diameter_mm)
            seconds["ct_nodules"] = time.perf_counter() - t_ct
        del ct_vol
    warnings += list(calc.warnings)
    seconds["load_suv"] = time.perf_counter() - t

    t = time.perf_counter()
    lm: Landmarks | None = find_landmarks(ct_on_pet) if ct_on_pet is not None else None
    body = lm.body if lm is not None else None
    reference = soft_tissue_reference(suv_vol.array, np.zeros(suv_vol.array.shape, np.int32), lm,
                                      ct_on_pet.array if ct_on_pet is not None else None)
    labels, foci = detect_foci(suv_vol, body, settings.detection, settings.segmentation, reference)
    seconds["detect"] = time.perf_counter() - t

    t = time.perf_counter()
    scale = ActivityScale(calc.decayed_activity_bq, calc.injected_activity_bq, calc.patient.weight_kg * 1000.0,
                          calc.half_life_s, calc.uptake_time_s)
    lesions, reference = measure_lesions(suv_vol, labels, foci, scale, lm,
                                         ct_on_pet.array if ct_on_pet is not None else None, settings.avid,
                                         list(settings.recovery) if settings.recovery else None,
                                         settings.activity_margin_mm)
    if nodules:
        labels, lesions = add_ct_lesions(suv_vol, labels, lesions, nodules, scale, lm)
    lesions = with_recovery(lesions, settings.recovery_curve)
    seconds["measure"] = time.perf_counter() - t
    if lm is None:
        warnings.append("no CT: physiological uptake is not recognised; every focus is listed as a lesion")
    return SeriesResult(
        pet_series_uid=str(pet[0].get("SeriesInstanceUID", "")),
        ct_series_uid=str(ct[0].get("SeriesInstanceUID", "")) if ct else None,
        suv=calc, suv_volume=suv_vol, labels=labels, lesions=lesions, reference_suv=reference,
        pet_sop_uids=[str(d.SOPInstanceUID) for d in ordered], pet_headers=ordered, seconds=seconds,
        warnings=warnings,
    )


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
            "id": les.id, "label": les.label, "detection": les.detection, "ct_diameter_mm": les.ct_diameter_mm,
            "site": les.site, "centroid_mm": list(les.centroid_mm),
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
            "partial_volume_corrected": les.partial_volume,
            "recovery": les.recovery,
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


def write_results(out_dir: Path, document: dict[str, Any]) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "results.json"
    json_path.write_text(json.dumps(document, indent=1, ensure_ascii=False), encoding="utf-8")
    csv_path = out_dir / "lesions.csv"
    with open(csv_path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(CSV_COLUMNS)
        for les in document["lesions"]:
            x, y, z = les["centroid_mm"]
            shown = CT_DISPLAY if les.get("detection", "pet") == "ct" else les["label"]
            writer.writerow([les["id"], shown, les["site"], x, y, z, les["volume_ml"], les["suv_max"],
                             les["suv_peak"], les["suv_mean"], les["total_lesion_uptake"], les["activity_mbq"],
                             les["percent_injected_activity"], les["lesion_to_background"], les["background_suv"],
                             les["mean_hu"], les["iodine_avid"], les.get("detection", "pet"),
                             les.get("ct_diameter_mm")])
    return [json_path, csv_path]


def quantify_files(pet_paths: Sequence[Path], ct_paths: Sequence[Path] | None, settings: QuantSettings) -> SeriesResult:
    """Headers are read first; pixel data slice by slice while the volumes are filled."""
    pet = [pydicom.dcmread(p, stop_before_pixels=True) for p in pet_paths]
    ct = [pydicom.dcmread(p, stop_before_pixels=True) for p in ct_paths] if ct_paths else None
    return quantify_series(pet, ct, settings)


def process_study(series: dict[str, SeriesFiles], settings: QuantSettings) -> list[tuple[SeriesResult,
                                                                                       dict[str, Any]]]:
    """Quantify every selected PET series of one study; StudyError when none can be."""
    pairs, notes = select_series(series, settings)
    if not pairs:
        raise StudyError("no quantifiable PET series: " + ("; ".join(notes) or "the study holds no PET series"))
    pairs.sort(key=lambda p: -len(p[0].paths))  # the primary series (most slices) first
    out = []
    for pet, ct in pairs:
        result = quantify_files(pet.paths, ct.paths if ct else None, settings)
        out.append((result, results_document(result, settings, notes)))
    return out


def write_study_outputs(out_dir: Path, results: Sequence[tuple[SeriesResult, dict[str, Any]]],
                        settings: QuantSettings | None = None, prior: Any = None) -> list[Path]:
    """results.json + lesions.csv + the DICOM objects (seg.dcm, sr.dcm, sc-N.dcm) of the primary PET
    series in out_dir; further series in out_dir/<PET SeriesInstanceUID>/. Written to a temporary
    folder first, then moved in place. `prior` (encode.sc.PriorView) adds the side-by-side page."""
    from node.encode.objects import build_objects, write_objects  # encode depends on this module
    # Per process: a prior quantified inside another study's job may be written by its own job too.
    staging = out_dir.with_name(f"{out_dir.name}.partial-{os.getpid()}")
    if staging.exists():
        shutil.rmtree(staging)
    written = []
    for n, (result, doc) in enumerate(results):
        target = staging if n == 0 else staging / result.pet_series_uid
        # Objects first: they settle each lesion's tracking UID, which results.json then records.
        objects = build_objects(result, doc, settings or QuantSettings(), prior if n == 0 else None)
        files = write_results(target, doc)
        files += write_objects(target, objects)
        written += [out_dir / p.relative_to(staging) for p in files]
    for attempt in range(3):  # another process may put the same (deterministic) results in place meanwhile
        if out_dir.exists():
            shutil.rmtree(out_dir, ignore_errors=True)
        try:
            os.replace(staging, out_dir)
            break
        except OSError:
            if attempt == 2:
                raise
    return written
