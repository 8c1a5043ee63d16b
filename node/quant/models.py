"""The quantification's result models: frozen values that quant produces and output/encode read.

Labels, sites and detections are string enums whose values are exactly the strings results.json
carries (docs/results-schema.md), so the document does not change; readers ask the enum for its
category, organ or display text instead of taking label strings apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from pydicom.dataset import Dataset

from node.quant.sphere import SphereFit
from node.quant.suv import SuvCalculation
from node.quant.volume import Volume

CT_DISPLAY = "non-avid (CT)"  # how a CT-found nodule is shown (table, CSV, tracking identifier, SEG label)


class LesionCategory(StrEnum):
    METASTASIS = "metastasis"
    REMNANT = "remnant"
    PHYSIOLOGICAL = "physiological"


class LesionLabel(StrEnum):
    """What a focus is, by anatomy (node.quant.measure.classify)."""

    METASTASIS = "metastasis"
    REMNANT = "remnant"  # thyroid remnant in the thyroid bed
    SALIVARY_GLAND = "physiological:salivary gland"
    NASAL_MUCOSA = "physiological:nasal mucosa"
    BLADDER = "physiological:bladder"
    KIDNEY = "physiological:kidney"
    STOMACH = "physiological:stomach"
    BOWEL = "physiological:bowel"

    @property
    def category(self) -> LesionCategory:
        return LesionCategory(self.value.split(":", 1)[0])

    @property
    def is_physiological(self) -> bool:
        return self.category is LesionCategory.PHYSIOLOGICAL

    @property
    def organ(self) -> str | None:
        """The organ of physiological uptake ("salivary gland"), None for a lesion."""
        return self.value.split(":", 1)[1] if self.is_physiological else None

    @property
    def followed(self) -> bool:
        """Metastases and remnants are sized, dosed and followed over time; physiological uptake is not."""
        return not self.is_physiological


class Site(StrEnum):
    """Where a lesion lies; neck nodes by level (Som et al., Arch Otolaryngol Head Neck Surg 1999;125:388)."""

    UNKNOWN = "unknown (no CT)"
    HEAD_AND_NECK = "head and neck"
    HEAD = "head"
    THYROID_BED = "thyroid bed"
    NECK = "neck"
    NECK_LEVEL_II = "neck (level II)"
    NECK_LEVEL_VI = "neck (level VI)"
    LUNG = "lung"
    BONE = "bone"
    MEDIASTINUM = "mediastinum / chest wall"
    UPPER_ABDOMEN = "upper abdomen"
    RETROPERITONEUM = "retroperitoneum"
    ABDOMEN = "abdomen"
    PELVIS = "pelvis"
    ABDOMEN_PELVIS = "abdomen / pelvis"


class Detection(StrEnum):
    PET = "pet"  # a PET focus
    CT = "ct"  # a solid nodule found on CT, measured on PET at its site (node.quant.ctlesions)


class SizeSource(StrEnum):
    """Where a lesion's best size comes from (node.quant.recovery.best_size)."""

    CT = "ct"  # the CT nodule's diameter
    SPHERE_FIT = "sphere_fit"  # the blurred-sphere fit, when it resolved the lesion
    VOLUME = "volume"  # the equivalent sphere of the delineated volume


@dataclass(frozen=True)
class Recovery:
    """Partial-volume recovery by the best size, beside the measured values (results.json `recovery`)."""

    size_mm: float
    size_source: SizeSource
    recovery_coefficient: float
    suv_max_corrected: float
    activity_mbq_corrected: float


@dataclass(frozen=True)
class PartialVolume:
    """Recovery by the delineated volume from a site's sphere table (results.json `partial_volume_corrected`)."""

    recovery_coefficient: float
    suv_max: float
    activity_mbq: float


@dataclass(frozen=True)
class Lesion:
    id: int
    label: LesionLabel
    site: Site
    centroid_mm: tuple[float, float, float]
    volume_ml: float
    suv_max: float
    suv_peak: float
    suv_mean: float
    total_lesion_uptake: float
    activity_mbq: float
    activity_mbq_at_administration: float | None
    percent_injected_activity: float | None
    lesion_to_background: float
    background_suv: float
    mean_hu: float | None
    iodine_avid: bool
    voxels: int
    elongation: float
    mask_label: int  # the focus' value in the label volume
    partial_volume: PartialVolume | None = None
    activity_recovered_mbq: float | None = None  # spill-out recovered (enlarged VOI), at scan time
    sphere: SphereFit | None = None  # blurred-sphere fit: size without a threshold (dosimetry mass)
    percent_injected_activity_recovered: float | None = None
    detection: Detection = Detection.PET
    ct_diameter_mm: float | None = None
    recovery: Recovery | None = None  # partial-volume recovery by the best size (node.quant.recovery)

    @property
    def found_on_ct(self) -> bool:
        return self.detection is Detection.CT

    @property
    def shown_label(self) -> str:
        """The label as tables show it: CT-found nodules as `non-avid (CT)`."""
        return CT_DISPLAY if self.found_on_ct else self.label.value

    @property
    def equivalent_diameter_mm(self) -> float:
        return (6 * self.volume_ml * 1000 / math.pi) ** (1 / 3)


@dataclass(frozen=True)
class SeriesResult:
    """One quantified PET series: the SUV volume, the label volume of its foci and their measurements."""

    pet_series_uid: str
    ct_series_uid: str | None
    suv: SuvCalculation
    suv_volume: Volume
    labels: np.ndarray
    lesions: tuple[Lesion, ...]
    reference_suv: float
    pet_sop_uids: tuple[str, ...]  # in volume (slice) order
    pet_headers: tuple[Dataset, ...]
    seconds: dict[str, float]
    warnings: tuple[str, ...]
