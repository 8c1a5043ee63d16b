"""Earlier scans of the patient that are already in the node, related to the current scan.

Read-only: the quantify job hands in a `ScanSource` (the index and the stored files, read-only) and
gets the `comparison` / `dosimetry` sections and the prior view for the side-by-side page. An earlier
study without results of its own yet (a prior just retrieved from the PACS whose own job has not run)
is quantified here in memory; its results are published by its own job, never by another study's.
Retrieval from the PACS is a stage of the service (node/retrieve.py) that runs before this job.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import pydicom

from node.assemble import SeriesFiles, process_study, suv_volume_of
from node.compare.register import coarse
from node.compare.study import ComparisonSettings, ScanView, ct_on_coarse_grid, inherit_tracking, relate_scans
from node.encode.sc import PriorView
from node.quant.study import QuantSettings, StudyError
from node.quant.suv import SuvError
from node.quant.volume import VolumeError
from node.uids import is_valid_uid

log = logging.getLogger(__name__)

DAY_S = 86400.0


class ScanSource(Protocol):
    """What relating needs to read about other studies (implemented over the index by the job)."""

    def earlier_studies(self, study_uid: str) -> list[str]:
        """Other studies of the same patient (PatientID + IssuerOfPatientID) in the node."""

    def study_date(self, study_uid: str) -> str | None:
        """StudyDate (YYYYMMDD) as indexed."""

    def series_files(self, series_uid: str) -> list[Path]:
        """The series' stored files in slice order."""

    def study_series(self, study_uid: str) -> dict[str, SeriesFiles]:
        """Every series of a study with its files."""

    def stored_results(self, study_uid: str) -> dict[str, Any] | None:
        """The study's published results.json, or None."""


@dataclass(frozen=True)
class Related:
    """What relating produced: the side-by-side view (or None) and each prior used with a digest of
    the results used (for the result objects' identity, node.encode.identity)."""

    prior_view: PriorView | None
    priors_used: tuple[tuple[str, bytes], ...] = ()


def in_window(when: datetime, reference: datetime, window_s: float) -> bool:
    return when < reference and (reference - when).total_seconds() <= window_s


def study_day(study_date: str | None) -> datetime | None:
    try:
        return datetime.strptime(str(study_date or ""), "%Y%m%d")
    except ValueError:
        return None


def _findings_bytes(doc: dict[str, Any]) -> bytes:
    """A prior's results as used, without timings (they differ on every run)."""
    return json.dumps({k: v for k, v in doc.items() if k != "seconds"}, sort_keys=True, default=str).encode()


def prior_doc(source: ScanSource, uid: str, quant: QuantSettings, reference: datetime,
              window_s: float) -> dict[str, Any] | None:
    """An earlier scan's results within the window: its published ones, else (a study retrieved from
    the PACS and not yet quantified) quantified now, in memory."""
    doc = source.stored_results(uid)
    if doc is None:
        # Only quantify what can be in the window (StudyDate: a day's resolution). Without a
        # readable StudyDate the exact reference time decides after quantification, below.
        day = study_day(source.study_date(uid))
        if day is not None and not in_window(day, reference, window_s + DAY_S):
            return None
        series = source.study_series(uid)
        if not any(s.modality == "PT" for s in series.values()):
            return None
        try:
            doc = process_study(series, quant)[0][1]
        except (StudyError, SuvError, VolumeError) as exc:
            log.warning("prior study %s cannot be quantified: %s", uid, exc)
            return None
    if not doc.get("reference_datetime") or not doc.get("injection_datetime") or not doc.get("injected_activity_bq"):
        return None
    return doc if in_window(datetime.fromisoformat(doc["reference_datetime"]), reference, window_s) else None


def scan_view(source: ScanSource, doc: dict[str, Any], quant: QuantSettings, need_pet: bool) -> ScanView:
    """What registration needs of an earlier scan (CT on a coarse grid, or its SUV without CT), and its
    SUV at full resolution (local noise for change limits and dose uncertainty)."""
    ct = source.series_files(doc["ct_series_instance_uid"]) if doc.get("ct_series_instance_uid") else []
    pet = source.series_files(doc["pet_series_instance_uid"])
    suv = suv_volume_of(pet, quant.suv) if pet else None
    return ScanView(doc, pydicom.dcmread(pet[0], stop_before_pixels=True) if pet else pydicom.Dataset(),
                    ct_on_coarse_grid(ct) if ct else None,
                    coarse(suv) if suv is not None and (need_pet or not ct) else None, suv)


def relate_to_priors(source: ScanSource, study_uid: str, result: Any, doc: dict[str, Any],
                     current_ct: Sequence[Path], settings: ComparisonSettings, quant: QuantSettings) -> Related:
    """Find earlier scans of the same patient in the node, add `comparison` / `dosimetry` to doc,
    carry tracking UIDs over; returns what the side-by-side page needs and the priors used."""
    if not doc.get("reference_datetime") or not doc.get("injection_datetime"):
        return Related(None)
    reference = datetime.fromisoformat(doc["reference_datetime"])
    window_s = settings.prior_window_days * DAY_S
    found = [(uid, prior_doc(source, uid, quant, reference, window_s))
             for uid in source.earlier_studies(study_uid) if is_valid_uid(uid)]
    docs = [d for _, d in found if d is not None]
    if not docs:
        return Related(None)
    priors = [scan_view(source, d, quant, need_pet=not current_ct) for d in docs]
    current = ScanView(doc, result.pet_headers[0], ct_on_coarse_grid(current_ct) if current_ct else None,
                       coarse(result.suv_volume) if not current_ct or any(p.ct is None for p in priors) else None,
                       result.suv_volume)
    log.info("study %s: relating to %d earlier scan(s): %s", study_uid, len(priors),
             ", ".join(p.doc["study_instance_uid"] for p in priors))
    sections, pairing, compared = relate_scans(result.suv_volume, current, priors, settings)
    doc.update(sections)
    inherit_tracking(doc, pairing)
    used_uids = {p["study_instance_uid"] for section in ("comparison", "dosimetry")
                 if isinstance(doc.get(section), dict) for p in doc[section].get("time_points", [])
                 if p.get("study_instance_uid") and p["study_instance_uid"] != study_uid}
    used = tuple(sorted((uid, _findings_bytes(d)) for uid, d in found if d is not None and uid in used_uids))
    view = PriorView(compared.doc, compared.suv) if compared is not None and compared.suv is not None else None
    return Related(view, used)
