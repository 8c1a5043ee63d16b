"""Quantify one PET series (and its CT): SUV -> detect -> measure, over datasets in memory.

The pure core of `iodine-node process` and the service's quantify job: no file or network I/O.
Which files form a study and its series, and reading them, is the assemble stage (node.assemble);
the results document and the files are node.output's; the DICOM objects node.encode's.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from pydicom.dataset import Dataset

from node.quant.ctlesions import add_ct_lesions
from node.quant.ctnodules import CtNodule, find_ct_nodules
from node.quant.detect import DetectionSettings, SegmentationSettings, detect_foci
from node.quant.landmarks import Landmarks, find_landmarks
from node.quant.measure import (
    DEFAULT_ACTIVITY_MARGIN_MM,
    ActivityScale,
    AvidSettings,
    measure_lesions,
    soft_tissue_reference,
)
from node.quant.models import SeriesResult
from node.quant.recovery import DEFAULT_CURVE_MM, with_recovery
from node.quant.suv import SuvCalculation, SuvSettings, compute_suv
from node.quant.suvtypes import ratio_to_bw
from node.quant.volume import PixelSource, Volume, assemble, dataset_pixels, resample_like

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


def pet_rejection(header: Dataset, settings: QuantSettings) -> str | None:
    """Why a series (given by one of its headers) is not a quantifiable PET series (None: it is)."""
    h = header
    description = str(h.get("SeriesDescription", ""))
    if str(h.get("Modality", "")) != "PT":
        return "not PET"
    image_type = [str(v).upper() for v in (h.get("ImageType") or [])] if not isinstance(h.get("ImageType"), str) \
        else [str(h.get("ImageType")).upper()]
    if image_type and image_type[0] == "DERIVED" and "MIP" in " ".join(image_type):
        return "a derived MIP series"
    if settings.include_description and not any(re.search(p, description) for p in settings.include_description):
        return f"SeriesDescription {description!r} matches no quantification.series.include pattern"
    for pattern in settings.exclude_description:
        if re.search(pattern, description):
            return f"SeriesDescription {description!r} matches exclude pattern {pattern!r}"
    corrected = h.get("CorrectedImage") or []
    corrected = {str(c).upper() for c in ([corrected] if isinstance(corrected, str) else corrected)}
    if "ATTN" not in corrected:
        return "not attenuation-corrected (CorrectedImage lacks ATTN)"
    if str(h.get("DecayCorrection", "")).upper() != "NONE" and "DECY" not in corrected:
        return "not decay-corrected (CorrectedImage lacks DECY)"
    return None




def suv_volume(pet: Sequence[Dataset], settings: SuvSettings, pixels: PixelSource = dataset_pixels,
               suv_type: str = "bw", label: str | None = None) -> tuple[Volume, list[Dataset], SuvCalculation]:
    """(SUV volume, headers in slice order, the SUV calculation) of one PET series: SUVbw, or another
    normalisation (node.quant.suvtypes.SUV_TYPES; SuvError when the headers lack what it needs)."""
    pet_vol, order = assemble(pet, label or f"PET series {pet[0].get('SeriesInstanceUID', '')}", pixels=pixels)
    ordered = [pet[i] for i in order]
    calc = compute_suv(ordered, settings)
    ratio = 1.0 if suv_type == "bw" else ratio_to_bw(calc.patient, suv_type)
    factors = (np.asarray(calc.factors, np.float64) * ratio).astype(np.float32)[:, None, None]
    return pet_vol.with_array(pet_vol.array * factors), ordered, calc


def quantify_series(pet: Sequence[Dataset], ct: Sequence[Dataset] | None, settings: QuantSettings,
                    pixels: PixelSource = dataset_pixels) -> SeriesResult:
    """The pure pipeline over datasets; `pixels` gives a dataset's pixel array (node.quant.volume.assemble)."""
    seconds: dict[str, float] = {}
    warnings: list[str] = []
    nodules: list[CtNodule] = []
    t = time.perf_counter()
    suv_vol, ordered, calc = suv_volume(pet, settings.suv, pixels)
    ct_on_pet: Volume | None = None
    if ct:
        ct_vol, _ = assemble(ct, f"CT series {ct[0].get('SeriesInstanceUID', '')}", dtype=np.int16, pixels=pixels)
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
        suv=calc, suv_volume=suv_vol, labels=labels, lesions=tuple(lesions), reference_suv=reference,
        pet_sop_uids=tuple(str(d.SOPInstanceUID) for d in ordered), pet_headers=tuple(ordered), seconds=seconds,
        warnings=tuple(warnings),
    )
