"""TID 1500 Measurement Report in a Comprehensive 3D SR: one volumetric ROI group per focus."""

from __future__ import annotations

import highdicom as hd
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

import node
from node.encode import codes as c
from node.encode.identity import MANUFACTURER, MODEL, SERIES_DESCRIPTIONS, SERIES_NUMBERS, ResultIdentity
from node.quant.measure import Lesion
from node.quant.study import SeriesResult
from node.uids import derive_uid


def _finding(lesion: Lesion) -> tuple[object, list[hd.sr.FindingSite]]:
    if lesion.label.startswith("physiological:"):
        organ = c.ORGANS.get(lesion.label.split(":", 1)[1], c.TISSUE)
        return organ, [hd.sr.FindingSite(organ)]
    if lesion.label == "remnant":
        return c.THYROID, [hd.sr.FindingSite(c.THYROID)]
    site = c.SITES.get(lesion.site)
    return c.LESION, [hd.sr.FindingSite(site)] if site else []


def _measurements(lesion: Lesion) -> list[hd.sr.Measurement]:
    m = [
        hd.sr.Measurement(c.SUVBW, lesion.suv_max, c.UNIT_SUVBW, derivation=c.MAXIMUM),
        hd.sr.Measurement(c.SUVBW, lesion.suv_mean, c.UNIT_SUVBW, derivation=c.MEAN),
        hd.sr.Measurement(c.SUVBW, lesion.suv_peak, c.UNIT_SUVBW, derivation=c.PEAK),
        hd.sr.Measurement(c.VOLUME, lesion.volume_ml, c.UNIT_ML),
        hd.sr.Measurement(c.METABOLIC_VOLUME, lesion.volume_ml, c.UNIT_ML),
        hd.sr.Measurement(c.TOTAL_LESION_UPTAKE, lesion.total_lesion_uptake, c.UNIT_G),
        hd.sr.Measurement(c.LBR, lesion.lesion_to_background, c.UNIT_RATIO),
        hd.sr.Measurement(c.LBR_BACKGROUND, lesion.background_suv, c.UNIT_SUVBW),
        hd.sr.Measurement(c.ACTIVITY_AT_SCAN, lesion.activity_mbq, c.UNIT_MBQ),
    ]
    if lesion.activity_mbq_at_administration is not None:
        m.append(hd.sr.Measurement(c.ACTIVITY_AT_ADMIN, lesion.activity_mbq_at_administration, c.UNIT_MBQ))
    if lesion.percent_injected_activity is not None:
        m.append(hd.sr.Measurement(c.PERCENT_IA, lesion.percent_injected_activity, c.UNIT_PERCENT))
    return m


def build_sr(result: SeriesResult, identity: ResultIdentity, seg: Dataset | None, time_point: str,
             charset: str | None) -> hd.sr.Comprehensive3DSR:
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=derive_uid("iodine-node", "device"), name="iodine-node", manufacturer_name=MANUFACTURER,
            model_name=f"{MODEL} {node.__version__}"))
    context = hd.sr.ObservationContext(observer_device_context=device)
    groups = []
    for lesion in result.lesions:
        assert seg is not None
        finding, sites = _finding(lesion)
        groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=identity.tracking_uid(lesion.id),
                                                         identifier=f"Lesion {lesion.id}"),
            referenced_segment=hd.sr.ReferencedSegment(
                sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID, segment_number=lesion.id,
                source_series=hd.sr.SourceSeriesForSegmentation(result.pet_series_uid)),
            finding_type=finding, finding_sites=sites or None,
            time_point_context=hd.sr.TimePointContext(time_point=time_point),
            measurements=_measurements(lesion),
            qualitative_evaluations=[hd.sr.QualitativeEvaluation(c.IODINE_AVID,
                                                                 c.YES if lesion.iodine_avid else c.NO)],
        ))
    if not groups:
        # No foci: a study-level group (TID 1501) says so, with the soft-tissue reference it was judged by.
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=identity.tracking_uid(0), identifier="Study"),
            measurements=[hd.sr.Measurement(c.REFERENCE_SOFT_TISSUE, result.reference_suv, c.UNIT_SUVBW)]
            if result.reference_suv == result.reference_suv else None,
            qualitative_evaluations=[hd.sr.QualitativeEvaluation(c.FINDING, c.NO_FOCI)],
            time_point_context=hd.sr.TimePointContext(time_point=time_point),
        ))
    report = hd.sr.MeasurementReport(observation_context=context, procedure_reported=c.PROCEDURE,
                                     imaging_measurements=groups, title=codes.cid7021.ImagingMeasurementReport)
    evidence = list(result.pet_headers) + ([seg] if seg is not None else [])
    scheme = CodingSchemeIdentificationItem(designator=c.PRIVATE_SCHEME, name=c.PRIVATE_SCHEME_NAME,
                                               responsible_organization="iodine-node")
    return hd.sr.Comprehensive3DSR(
        evidence=evidence, content=report, series_instance_uid=identity.series_uid("sr"),
        series_number=SERIES_NUMBERS["sr"], sop_instance_uid=identity.instance_uid("sr"), instance_number=1,
        manufacturer=MANUFACTURER, is_complete=True, series_description=SERIES_DESCRIPTIONS["sr"],
        coding_schemes=[scheme], specific_character_set=charset,
    )
