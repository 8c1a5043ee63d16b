"""TID 1500 Measurement Report in a Comprehensive 3D SR: per focus a planar ROI group (an outline on
the PET slice of its SUVmax, which image viewers draw) and a volumetric ROI group (its SEG segment,
which 3D Slicer/dcmqi read), both under the lesion's tracking identifier."""

from __future__ import annotations

import math
from typing import Any

import highdicom as hd
import numpy as np
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

import node
from node.encode import codes as c
from node.encode.identity import MANUFACTURER, MODEL, SERIES_DESCRIPTIONS, SERIES_NUMBERS, ResultIdentity
from node.encode.planar import suvmax_voxel
from node.encode.seg import segment_label
from node.quant.models import Lesion, LesionLabel, SeriesResult
from node.uids import derive_uid


def _finding(lesion: Lesion) -> tuple[object, list[hd.sr.FindingSite]]:
    if lesion.label.organ is not None:
        organ = c.ORGANS.get(lesion.label.organ, c.TISSUE)
        return organ, [hd.sr.FindingSite(organ)]
    if lesion.label == LesionLabel.REMNANT:
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


def _algorithm() -> hd.sr.AlgorithmIdentification:
    return hd.sr.AlgorithmIdentification(name="iodine-node", version=node.__version__)


def planar_group(result: SeriesResult, lesion: Lesion, tracking: tuple[str, str], finding: object,
                 sites: list[hd.sr.FindingSite], when: hd.sr.TimePointContext | None, label: str
                 ) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """TID 1410 for image viewers: a point on the focus' SUVmax voxel, on its PET slice (SCOORD
    POINT on that image), carrying SUVmax and SUVpeak. Same tracking identifier and UID as the
    volumetric group (one lesion), so readers that merge groups by tracking UID (OHIF) see one.

    Beyond TID 1419 (as highdicom reads it), each NUM also names the point it was taken at (INFERRED
    FROM SCOORD, as TID 300 has it; the Comprehensive 3D SR IOD allows that relationship) and the
    group has a Comment (DCM 121106) with the segment's label: this is the shape OHIF/Cornerstone
    write themselves and turn back into a probe measurement listed by that label (their Probe adapter
    reads the SCOORD of the group's first NUM)."""
    k, j, i = suvmax_voxel(result.suv_volume.array, result.labels == lesion.mask_label)
    point = np.asarray([[i + 0.5, j + 0.5]])  # PS3.3 C.18.6.1.2: (0, 0) is the top-left pixel's top-left corner
    source = hd.sr.SourceImageForRegion.from_source_image(result.pet_headers[k])
    group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=tracking[0], identifier=tracking[1]),
        referenced_region=hd.sr.ImageRegion(graphic_type=hd.sr.GraphicTypeValues.POINT, graphic_data=point,
                                            source_image=source),
        finding_type=finding, finding_sites=sites or None, time_point_context=when,
        method=c.SUV_METHOD, algorithm_id=_algorithm(),
        measurements=[hd.sr.Measurement(c.SUVBW, lesion.suv_max, c.UNIT_SUVBW, derivation=c.MAXIMUM),
                      hd.sr.Measurement(c.SUVBW, lesion.suv_peak, c.UNIT_SUVBW, derivation=c.PEAK)])
    content = group[0].ContentSequence
    for item in content:
        if item.ValueType == "NUM":
            if "ContentSequence" not in item:
                item.ContentSequence = []
            item.ContentSequence.append(hd.sr.CoordinatesForMeasurement(
                graphic_type=hd.sr.GraphicTypeValues.POINT, graphic_data=point, source_image=source))
    content.append(hd.sr.TextContentItem(name=c.COMMENT, value=label,
                                         relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
    return group


def _num(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def _change_content(row: dict[str, Any]) -> tuple[list[hd.sr.Measurement], list[hd.sr.QualitativeEvaluation]]:
    """The prior time point's values and the change, for a lesion followed from an earlier scan."""
    m: list[hd.sr.Measurement] = []
    q = [hd.sr.QualitativeEvaluation(c.UPTAKE_CHANGE, c.CHANGE_CATEGORIES[row["category"]])]
    prior_suv = _num(row["suv_max"][0])
    if prior_suv is not None:
        m.append(hd.sr.Measurement(c.SUVMAX_PRIOR, prior_suv, c.UNIT_SUVBW))
        q.append(hd.sr.QualitativeEvaluation(c.IODINE_AVID_PRIOR, c.YES if row["iodine_avid"][0] else c.NO))
    change = _num(row.get("relative_change_suv_max"))
    if change is not None:
        m.append(hd.sr.Measurement(c.SUVMAX_CHANGE, 100.0 * change, c.UNIT_PERCENT))
    prior_ia = _num(row["percent_injected_activity"][0])
    if prior_ia is not None:
        m.append(hd.sr.Measurement(c.PERCENT_IA_PRIOR, prior_ia, c.UNIT_PERCENT))
    residual = _num(row.get("residual_suv_max_at_prior_site"))
    if residual is not None:
        m.append(hd.sr.Measurement(c.SUVMAX_RESIDUAL, residual, c.UNIT_SUVBW))
    uptake_prior = _num(row.get("uptake_time_h_prior"))
    if uptake_prior is not None:
        m.append(hd.sr.Measurement(c.UPTAKE_TIME_PRIOR, uptake_prior, c.UNIT_HOUR))
    if row.get("uptake_times_differ") is not None:
        q.append(hd.sr.QualitativeEvaluation(c.UPTAKE_TIMES_DIFFER, c.YES if row["uptake_times_differ"] else c.NO))
    if row.get("tsh_change"):
        beyond = row["tsh_change"]["verdict"] != "stable"
        q.append(hd.sr.QualitativeEvaluation(c.CHANGE_BEYOND_REPEATABILITY, c.YES if beyond else c.NO))
    return m, q


def _dose_content(row: dict[str, Any]) -> list[hd.sr.Measurement]:
    if "gy_per_gbq" not in row:
        return []
    m = [hd.sr.Measurement(c.DOSE_PER_ACTIVITY, row["gy_per_gbq"], c.UNIT_GY_PER_GBQ),
         hd.sr.Measurement(c.TIME_INTEGRATED_ACTIVITY, row["time_integrated_activity_h"], c.UNIT_HOUR)]
    if _num(row["effective_half_life_131_h"]) is not None:
        m.append(hd.sr.Measurement(c.EFFECTIVE_HALF_LIFE, row["effective_half_life_131_h"], c.UNIT_HOUR))
    if _num(row["biological_half_life_h"]) is not None:
        m.append(hd.sr.Measurement(c.BIOLOGICAL_HALF_LIFE, row["biological_half_life_h"], c.UNIT_HOUR))
    for key, gy in row["predicted_dose_gy"].items():
        m.append(hd.sr.Measurement(c.predicted_dose(float(key.removesuffix("_gbq"))), gy, c.UNIT_GY))
    if _num(row.get("gy_per_gbq_sd")) is not None:
        m.append(hd.sr.Measurement(c.DOSE_PER_ACTIVITY_SD, row["gy_per_gbq_sd"], c.UNIT_GY_PER_GBQ))
        for key in row["predicted_dose_gy"]:
            activity = float(key.removesuffix("_gbq"))
            m.append(hd.sr.Measurement(c.predicted_dose_sd(activity), round(row["gy_per_gbq_sd"] * activity, 3),
                                       c.UNIT_GY))
    return m


def _dose_evaluations(row: dict[str, Any]) -> list[hd.sr.QualitativeEvaluation]:
    decision = row.get("treat_threshold")
    return [hd.sr.QualitativeEvaluation(c.TREAT_THRESHOLD_DECISION, c.DECISIONS[decision])] \
        if decision in c.DECISIONS else []


def build_sr(result: SeriesResult, doc: dict[str, Any], identity: ResultIdentity,
             tracking: dict[int, tuple[str, str]], seg: Dataset | None, time_point: str,
             charset: str | None) -> hd.sr.Comprehensive3DSR:
    """TID 1500 for this scan; with an earlier scan, each followed lesion also carries the prior
    values, the change and its category (a lesion gone since is a group of its own, with the
    tracking UID it had), and dosimetry values where serial scans of one administration exist."""
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=derive_uid("iodine-node", "device"), name="iodine-node", manufacturer_name=MANUFACTURER,
            model_name=f"{MODEL} {node.__version__}"))
    context = hd.sr.ObservationContext(observer_device_context=device)
    comparison = doc.get("comparison") if isinstance(doc.get("comparison"), dict) else {}
    changes = {r["current_id"]: r for r in comparison.get("lesions", []) if r["current_id"] is not None}
    doses = {r["current_id"]: r for r in (doc.get("dosimetry") or {}).get("lesions", [])}
    # Position among the scans related here: after the prior of a comparison, or in the series of
    # one administration's time points.
    dose_points = [p["study_instance_uid"] for p in (doc.get("dosimetry") or {}).get("time_points", [])]
    order = dose_points.index(doc["study_instance_uid"]) + 1 if doc.get("study_instance_uid") in dose_points \
        else (2 if comparison.get("lesions") is not None else None)
    when = hd.sr.TimePointContext(time_point=time_point, time_point_order=order)
    groups = []
    for lesion in result.lesions:
        assert seg is not None
        finding, sites = _finding(lesion)
        extra_m, extra_q = _change_content(changes[lesion.id]) if lesion.id in changes else ([], [])
        extra_m += _dose_content(doses[lesion.id]) if lesion.id in doses else []
        extra_q += _dose_evaluations(doses[lesion.id]) if lesion.id in doses else []
        groups.append(planar_group(result, lesion, tracking[lesion.id], finding, sites, when,
                                   segment_label(lesion)))
        groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=tracking[lesion.id][0],
                                                         identifier=tracking[lesion.id][1]),
            referenced_segment=hd.sr.ReferencedSegment(
                sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID, segment_number=lesion.id,
                source_series=hd.sr.SourceSeriesForSegmentation(result.pet_series_uid)),
            finding_type=finding, finding_sites=sites or None,
            time_point_context=when, method=c.SUV_METHOD, algorithm_id=_algorithm(),
            measurements=_measurements(lesion) + extra_m,
            qualitative_evaluations=[hd.sr.QualitativeEvaluation(c.IODINE_AVID, c.YES if lesion.iodine_avid
                                                                 else c.NO), *extra_q],
        ))
    for row in comparison.get("lesions", []):
        if row["current_id"] is not None or not row.get("tracking_uid"):
            continue
        # Seen at the prior scan, not found now: no segment to reference, so a TID 1501 group.
        m, q = _change_content(row)
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=row["tracking_uid"],
                                                         identifier=f"Prior lesion {row['prior_id']}"),
            finding_type=c.LESION, finding_sites=[hd.sr.FindingSite(c.SITES[row["site"]])]
            if row.get("site") in c.SITES else None,
            time_point_context=when, measurements=m or None, qualitative_evaluations=q))
    if not groups:
        # No foci: a study-level group (TID 1501) says so, with the soft-tissue reference it was judged by.
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=identity.tracking_uid(0), identifier="Study"),
            measurements=[hd.sr.Measurement(c.REFERENCE_SOFT_TISSUE, result.reference_suv, c.UNIT_SUVBW)]
            if result.reference_suv == result.reference_suv else None,
            qualitative_evaluations=[hd.sr.QualitativeEvaluation(c.FINDING, c.NO_FOCI)],
            time_point_context=when,
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
