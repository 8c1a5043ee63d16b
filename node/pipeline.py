"""What a job does, run inside a worker process (never in the listener's process).

`quantify` runs the same study pipeline as `iodine-node process` on the series the completion
rules selected and writes its results, fsynced, into a staging folder; the service publishes that
folder (node.results_store) only if the job was not superseded meanwhile.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pydicom

from node.assemble import SeriesFiles, process_study, suv_volume_of
from node.compare.priors import retrieve_priors, was_retrieved
from node.compare.register import coarse
from node.compare.study import ComparisonSettings, ScanView, ct_on_coarse_grid, inherit_tracking, relate_scans
from node.crashpoints import crash_point
from node.encode.identity import inputs_digest
from node.encode.sc import PriorView
from node.quant.study import QuantSettings, StudyError
from node.quant.suv import SuvError
from node.quant.volume import VolumeError
from node.results_store import new_staging, publish, stage_outputs
from node.store import Store, open_store
from node.uids import is_valid_uid

log = logging.getLogger(__name__)

# Fault injection for tests of crash recovery: a job sleeps this long before it works.
FAULT_SLEEP_ENV = "IODINE_NODE_FAULT_JOB_SLEEP_S"


class JobError(Exception):
    """A job that cannot complete, with a reason a person can act on."""


def _series_files(conn: Store, root: Path, series_uid: str) -> list[Path]:
    return [root / p for p in conn.studies.series_paths(series_uid)]


def _study_series(conn: Store, root: Path, study_uid: str) -> dict[str, SeriesFiles]:
    """Every series of a study in the index, with its files (for a prior that has no results yet)."""
    out: dict[str, SeriesFiles] = {}
    for uid in conn.studies.study_series(study_uid):
        files = [f for f in _series_files(conn, root, uid) if f.is_file()]
        if files:
            out[uid] = SeriesFiles(uid, pydicom.dcmread(files[0], stop_before_pixels=True), files)
    return out


def run_quantify(storage_root: Path, study_uid: str, payload: dict[str, Any],
                 settings: QuantSettings, comparison: ComparisonSettings | None = None) -> dict[str, Any]:
    if not is_valid_uid(study_uid):
        raise JobError(f"invalid StudyInstanceUID {study_uid!r}")
    with _index(storage_root) as conn:
        wanted = list(payload.get("pet_series", []))
        for cts in payload.get("ct_series", {}).values():
            wanted += [c for c in cts if c not in wanted]
        series: dict[str, SeriesFiles] = {}
        for uid in wanted:
            files = _series_files(conn, storage_root, uid)
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                raise JobError(f"series {uid}: {len(missing)} indexed file(s) missing from the spool, "
                               f"e.g. {missing[0]}")
            if files:
                series[uid] = SeriesFiles(uid, pydicom.dcmread(files[0], stop_before_pixels=True), files)
    try:
        results = process_study(series, settings)
    except (StudyError, SuvError, VolumeError) as exc:
        raise JobError(str(exc)) from None
    primary, doc = results[0]
    prior_view = None
    # A failed comparison is recorded in the results; it must never lose the quantification.
    try:
        prior_view = relate_to_priors(storage_root, study_uid, primary, doc, series,
                                      comparison or ComparisonSettings(), settings)
    except Exception as exc:
        log.exception("study %s: relating to earlier scans failed", study_uid)
        doc["comparison"] = {"error": f"{type(exc).__name__}: {exc}"}
    crash_point("job-running")  # computed, nothing written
    # Inputs: every instance, every prior used, and the findings themselves (a TSH sidecar or anything
    # else that changes the content changes the UIDs); timings excluded, they differ on every run.
    findings = json.dumps([{k: v for k, v in d.items() if k != "seconds"} for _, d in results], sort_keys=True,
                          default=str).encode()
    inputs = inputs_digest([p.stem for s in series.values() for p in s.paths],
                           [*_priors_used(storage_root, study_uid, [d for _, d in results]), ("findings", findings)])
    staging = new_staging(storage_root, study_uid)
    try:
        written = stage_outputs(staging, results, settings, prior_view, inputs)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    crash_point("job-staged")
    summary = []
    for result, doc in results:
        lesions = doc["lesions"]
        summary.append({
            "pet_series_instance_uid": result.pet_series_uid,
            "ct_series_instance_uid": result.ct_series_uid,
            "pet_instances": len(result.pet_sop_uids),
            "lesions": len(lesions),
            "metastases": sum(1 for les in lesions if les["label"] == "metastasis"),
            "avid": sum(1 for les in lesions if les["iodine_avid"]),
            "seconds": doc["seconds"],
        })
    objects = []
    for path in written:
        if path.suffix == ".dcm":
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            objects.append({"kind": path.stem.split("-")[0], "path": str(path.relative_to(staging)),
                            "sop_instance_uid": str(ds.SOPInstanceUID), "sop_class_uid": str(ds.SOPClassUID),
                            "sha256": hashlib.sha256(path.read_bytes()).hexdigest()})
    # Paths are relative to the staging folder until the service publishes it (JobRunner._finish).
    return {"study_instance_uid": study_uid, "staging": str(staging.relative_to(storage_root)),
            "results_dir": f"results/{study_uid}", "inputs_digest": inputs,
            "files": [str(p.relative_to(staging)) for p in written], "objects": objects, "series": summary}


def _priors_used(storage_root: Path, study_uid: str, docs: list[dict[str, Any]]) -> list[tuple[str, bytes]]:
    """(StudyInstanceUID, results.json bytes) of every earlier scan the comparison used."""
    uids = {p["study_instance_uid"] for doc in docs for section in ("comparison", "dosimetry")
            if isinstance(doc.get(section), dict) for p in doc[section].get("time_points", [])
            if p.get("study_instance_uid") and p["study_instance_uid"] != study_uid}
    out = []
    for uid in sorted(u for u in uids if is_valid_uid(u)):
        path = storage_root / "results" / uid / "results.json"
        out.append((uid, path.read_bytes() if path.is_file() else b""))
    return out


def _earlier_studies(conn: Store, study_uid: str) -> tuple[tuple[str, str] | None, list[str]]:
    me = conn.studies.study_info(study_uid)
    if me is None or not me.patient_id:
        return None, []
    others = conn.studies.studies_of_patient(me.patient_id, me.issuer_of_patient_id, study_uid)
    return (me.patient_id, me.issuer_of_patient_id), others


_worker_index: str | None = None  # this worker process's index (node.jobs' pool initializer sets it)


def use_index(target: str) -> None:
    """Read the index at `target` (Store.target: a storage root or a DSN) in this worker process."""
    global _worker_index
    _worker_index = target


@contextmanager
def _index(storage_root: Path) -> Iterator[Store]:
    """The index, read-only (a worker never writes it; the service does)."""
    conn = open_store(_worker_index or storage_root, read_only=True)
    try:
        yield conn
    finally:
        conn.close()


def _in_window(when: datetime, reference: datetime, window_s: float) -> bool:
    return when < reference and (reference - when).total_seconds() <= window_s


def _study_day(study_date: str | None) -> datetime | None:
    try:
        return datetime.strptime(str(study_date or ""), "%Y%m%d")
    except ValueError:
        return None


def _prior_doc(storage_root: Path, conn: Store, uid: str, quant: QuantSettings, reference: datetime,
               window_s: float) -> dict[str, Any] | None:
    """An earlier scan's results within the window: stored ones, or (a study retrieved from the PACS
    and not yet quantified) quantified now and stored for reuse."""
    path = storage_root / "results" / uid / "results.json"
    if path.is_file():
        doc = json.loads(path.read_text(encoding="utf-8"))
    else:
        # Only quantify what can be in the window (StudyDate: a day's resolution). Without a
        # readable StudyDate the exact reference time decides after quantification, below.
        info = conn.studies.study_info(uid)
        day = _study_day(info.study_date if info else None)
        if day is not None and not _in_window(day, reference, window_s + 86400):
            return None
        series = _study_series(conn, storage_root, uid)
        if not any(s.modality == "PT" for s in series.values()):
            return None
        try:
            results = process_study(series, quant)
        except (StudyError, SuvError, VolumeError) as exc:
            log.warning("prior study %s cannot be quantified: %s", uid, exc)
            return None
        # No job of its own publishes it: published here (atomically, like a job's results) for reuse.
        staging = new_staging(storage_root, uid)
        stage_outputs(staging, results, quant)
        published = publish(storage_root, uid, staging, f"prior-{os.getpid()}-{time.time_ns()}")
        doc = json.loads((published / "results.json").read_text(encoding="utf-8"))  # with its tracking UIDs
    if not doc.get("reference_datetime") or not doc.get("injection_datetime") or not doc.get("injected_activity_bq"):
        return None
    return doc if _in_window(datetime.fromisoformat(doc["reference_datetime"]), reference, window_s) else None


def _scan_view(storage_root: Path, conn: Store, doc: dict[str, Any], quant: QuantSettings,
               need_pet: bool) -> ScanView:
    """What registration needs of an earlier scan (CT on a coarse grid, or its SUV without CT), and its
    SUV at full resolution (local noise for change limits and dose uncertainty)."""
    ct = _series_files(conn, storage_root, doc["ct_series_instance_uid"]) if doc.get("ct_series_instance_uid") else []
    pet = _series_files(conn, storage_root, doc["pet_series_instance_uid"])
    suv = suv_volume_of(pet, quant.suv) if pet else None
    return ScanView(doc, pydicom.dcmread(pet[0], stop_before_pixels=True) if pet else pydicom.Dataset(),
                    ct_on_coarse_grid(ct) if ct else None,
                    coarse(suv) if suv is not None and (need_pet or not ct) else None, suv)


def relate_to_priors(storage_root: Path, study_uid: str, result: Any, doc: dict[str, Any],
                     series: dict[str, SeriesFiles], settings: ComparisonSettings,
                     quant: QuantSettings) -> PriorView | None:
    """Find earlier scans of the same patient (this node first; the PACS when configured), add
    `comparison` / `dosimetry` to doc, carry tracking UIDs over; returns what the side-by-side
    page needs, or None."""
    if not doc.get("reference_datetime") or not doc.get("injection_datetime"):
        return None
    reference = datetime.fromisoformat(doc["reference_datetime"])
    window_s = settings.prior_window_days * 86400
    current_ct = series[doc["ct_series_instance_uid"]].paths if doc.get("ct_series_instance_uid") in series else []
    if settings.query is not None and not was_retrieved(storage_root, study_uid):
        with _index(storage_root) as conn:
            patient, known = _earlier_studies(conn, study_uid)
        if patient is not None:
            retrieved = retrieve_priors(settings.query, patient[0], patient[1], study_uid, reference,
                                        settings.prior_window_days, set(known), storage_root)
            if retrieved:
                log.info("study %s: %d prior study(ies) retrieved from the PACS", study_uid, len(retrieved))
    with _index(storage_root) as conn:
        _, others = _earlier_studies(conn, study_uid)
        docs = [d for d in (_prior_doc(storage_root, conn, uid, quant, reference, window_s)
                            for uid in others if is_valid_uid(uid)) if d is not None]
        priors = [_scan_view(storage_root, conn, d, quant, need_pet=not current_ct) for d in docs]
        if not priors:
            return None
        current = ScanView(doc, result.pet_headers[0], ct_on_coarse_grid(current_ct) if current_ct else None,
                           coarse(result.suv_volume) if not current_ct or any(p.ct is None for p in priors) else None,
                           result.suv_volume)
        log.info("study %s: relating to %d earlier scan(s): %s", study_uid, len(priors),
                 ", ".join(p.doc["study_instance_uid"] for p in priors))
        sections, pairing, compared = relate_scans(result.suv_volume, current, priors, settings)
        doc.update(sections)
        inherit_tracking(doc, pairing)
    if compared is None:
        return None
    return PriorView(compared.doc, compared.suv) if compared.suv is not None else None


def run_job(kind: str, storage_root: str, study_uid: str, payload: dict[str, Any],
            settings: QuantSettings, comparison: ComparisonSettings | None = None) -> dict[str, Any]:
    """Entry point in the worker process."""
    delay = float(os.environ.get(FAULT_SLEEP_ENV, "0") or 0)
    if delay > 0:
        time.sleep(delay)
    if kind == "quantify":
        return run_quantify(Path(storage_root), study_uid, payload, settings, comparison)
    raise JobError(f"unknown job kind {kind!r}")
