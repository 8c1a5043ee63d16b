"""`quantification`: the pure package's settings dataclasses (node.quant) used as they are, in the file's
shape; the groupings the file has and QuantSettings has not take their defaults from QuantSettings."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from node.compare.context import Regex
from node.config.types import PositiveFloat, _Section
from node.quant.detect import DetectionSettings, SegmentationSettings
from node.quant.measure import AvidSettings
from node.quant.recovery import DEFAULT_CURVE_MM
from node.quant.study import QuantSettings
from node.quant.suv import SuvSettings

# The quantification's settings are the pure package's own dataclasses (node.quant), validated by pydantic
# with the constraints written on them; their defaults are the only ones. Where the file's shape differs
# from QuantSettings (series, CT nodules, recovery), a section below takes its defaults from QuantSettings.
_Q = QuantSettings()


class RecoveryPoint(_Section):
    """One sphere of the site's recovery-coefficient measurement."""

    volume_ml: PositiveFloat
    rc: Annotated[float, Field(gt=0, le=1.5)]


class SeriesSection(_Section):
    """Which PET series are quantified (regular expressions on SeriesDescription)."""

    include_description: list[Regex] = Field(default_factory=lambda: list(_Q.include_description))
    exclude_description: list[Regex] = Field(default_factory=lambda: list(_Q.exclude_description))


class CtNodulesSection(_Section):
    """Solid lung nodules found on CT without a PET focus (non-avid lesions)."""

    enabled: bool = _Q.ct_nodules
    min_diameter_mm: Annotated[float, Field(ge=3, le=30)] = _Q.ct_nodule_min_diameter_mm


class RecoveryCurvePoint(_Section):
    """One sphere of a recovery measurement: diameter and recovery coefficient (measured / true)."""

    diameter_mm: PositiveFloat
    rc: Annotated[float, Field(gt=0, le=1.5)]


class RecoverySection(_Section):
    """Partial-volume recovery by the best size estimate (CT diameter, else sphere fit), beside the values."""

    enabled: bool = _Q.recovery_curve is not None
    curve: list[RecoveryCurvePoint] = Field(min_length=1, default_factory=lambda: [
        RecoveryCurvePoint(diameter_mm=d, rc=rc) for d, rc in DEFAULT_CURVE_MM])


class QuantificationSection(_Section):
    suv: SuvSettings = SuvSettings()
    detection: DetectionSettings = DetectionSettings()
    segmentation: SegmentationSettings = SegmentationSettings()
    avid: AvidSettings = AvidSettings()
    partial_volume: list[RecoveryPoint] | None = None
    activity_margin_mm: PositiveFloat = _Q.activity_margin_mm
    series: SeriesSection = SeriesSection()
    ct_nodules: CtNodulesSection = CtNodulesSection()
    recovery: RecoverySection = RecoverySection()

    @property
    def settings(self) -> QuantSettings:
        """QuantSettings: the leaf settings as they are, the file's groupings mapped onto its flat fields."""
        return QuantSettings(
            suv=self.suv, detection=self.detection, segmentation=self.segmentation, avid=self.avid,
            recovery=tuple((p.volume_ml, p.rc) for p in self.partial_volume) if self.partial_volume else None,
            activity_margin_mm=self.activity_margin_mm,
            include_description=tuple(self.series.include_description),
            exclude_description=tuple(self.series.exclude_description),
            ct_nodules=self.ct_nodules.enabled, ct_nodule_min_diameter_mm=self.ct_nodules.min_diameter_mm,
            recovery_curve=(tuple((p.diameter_mm, p.rc) for p in self.recovery.curve) if self.recovery.enabled
                            else None))
