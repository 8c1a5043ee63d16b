"""All result objects of one quantified PET series (SEG, SR, SC pages), and the results document with
each lesion's tracking identity settled; node.output writes both."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset

from node.encode.identity import ResultIdentity, settings_digest
from node.encode.identity import inputs_digest as inputs_digest_of
from node.encode.sc import PriorView, build_sc
from node.encode.seg import build_seg
from node.encode.sr import build_sr
from node.quant.models import CT_DISPLAY, Detection, SeriesResult
from node.quant.study import QuantSettings


def settle_tracking(doc: dict[str, Any], identity: ResultIdentity) -> dict[str, Any]:
    """A copy of doc in which every lesion has a tracking UID and identifier: inherited from an earlier
    scan when the lesion was matched to one (set by the comparison), else new."""
    lesions = []
    for lesion in doc["lesions"]:
        lesion = dict(lesion)
        if not lesion.get("tracking_uid"):
            lesion["tracking_uid"] = identity.tracking_uid(lesion["id"])
            ct = f" {CT_DISPLAY}" if lesion.get("detection") == Detection.CT else ""  # the cross-team display text
            lesion["tracking_id"] = f"Lesion {lesion['id']}{ct}"
        lesions.append(lesion)
    return {**doc, "lesions": lesions}


def tracking_of(doc: dict[str, Any]) -> dict[int, tuple[str, str]]:
    """{lesion id: (tracking UID, tracking identifier)} of a settled document."""
    return {les["id"]: (les["tracking_uid"], les.get("tracking_id") or f"Lesion {les['id']}") for les in doc["lesions"]}


@dataclass(frozen=True)
class ResultObjects:
    document: dict[str, Any]  # the results document with the tracking identities the objects carry
    datasets: list[tuple[str, Dataset]]  # (kind, dataset): "seg", "sr", "sc" (one per page)


def build_objects(result: SeriesResult, doc: dict[str, Any], settings: QuantSettings,
                  prior: PriorView | None = None, inputs_digest: str = "") -> ResultObjects:
    """SEG (when there are foci), SR, one or more SC pages (a side-by-side page
    with the earlier scan first when `prior` is given). `inputs_digest` (encode.identity.inputs_digest:
    every input instance and prior used) goes into the UIDs; without it, the PET instances do."""
    identity = ResultIdentity(result.pet_series_uid, result.ct_series_uid, settings_digest(settings),
                              inputs_digest or inputs_digest_of(result.pet_sop_uids))
    doc = settle_tracking(doc, identity)
    tracking = tracking_of(doc)
    source = result.pet_headers[0]
    # Carried over so names keep their encoding. highdicom takes single values; a code-extension
    # set such as "\ISO 2022 IR 58" is applied after construction (pydicom encodes on write).
    original = source.get("SpecificCharacterSet")
    charset = original if isinstance(original, str) else None
    uptake = doc.get("uptake_time_h")
    time_point = f"{source.get('StudyDate', '')} ({uptake:.0f} h after 124I administration)" if uptake is not None \
        else str(source.get("StudyDate", ""))
    points = [p for section in ("comparison", "dosimetry") if isinstance(doc.get(section), dict)
              for p in doc[section].get("time_points", []) if p["study_instance_uid"] == doc.get("study_instance_uid")]
    if points and points[0].get("tsh_uiu_per_ml") is not None:
        time_point += f", TSH {points[0]['tsh_uiu_per_ml']:g} uIU/mL"
    out: list[tuple[str, Dataset]] = []
    seg = build_seg(result, identity, tracking, charset)
    if seg is not None:
        out.append(("seg", seg))
    out.append(("sr", build_sr(result, doc, identity, tracking, seg, time_point, charset)))
    out += [("sc", sc) for sc in build_sc(result, doc, identity, charset, prior)]
    if original is not None and charset is None:
        for _, ds in out:
            ds.SpecificCharacterSet = list(original)
    return ResultObjects(doc, out)
