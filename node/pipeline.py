"""The quantify job, run inside a worker process (never in the listener's process).

It only reads: the index (opened read-only) and the stored instances. `quantify` runs the same study
pipeline as `iodine-node process` on the series the completion rules selected, relates the study to
earlier scans already in the node (node.compare.prior_scans; priors from the PACS were retrieved by the
retrieve stage before this job was queued, node.retrieve) and writes its results, fsynced, into a
staging folder of its own; the service publishes that folder (node.results_store) only if the job was
not superseded meanwhile.
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
from pathlib import Path
from typing import Any

import pydicom

from node.assemble import SeriesFiles, process_study
from node.compare.prior_scans import Related, relate_to_priors
from node.compare.study import ComparisonSettings
from node.crashpoints import crash_point
from node.encode.identity import inputs_digest
from node.quant.study import QuantSettings, StudyError
from node.quant.suv import SuvError
from node.quant.volume import VolumeError
from node.results_store import RESULTS, new_staging, stage_outputs
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
    related = Related(None)
    current_ct = series[doc["ct_series_instance_uid"]].paths if doc.get("ct_series_instance_uid") in series else []
    # A failed comparison is recorded in the results; it must never lose the quantification.
    try:
        with _index(storage_root) as conn:
            related = relate_to_priors(IndexScans(conn, storage_root), study_uid, primary, doc, current_ct,
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
                           [*related.priors_used, ("findings", findings)])
    staging = new_staging(storage_root, study_uid)
    try:
        written = stage_outputs(staging, results, settings, related.prior_view, inputs)
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


def _study_date(conn: Store, study_uid: str) -> str | None:
    info = conn.studies.study_info(study_uid)
    return info.study_date if info else None


class IndexScans:
    """The other studies of the node as relating to priors reads them (node.compare.prior_scans.ScanSource):
    the index read-only, the stored instances and published results."""

    def __init__(self, conn: Store, storage_root: Path) -> None:
        self.conn = conn
        self.root = storage_root

    def earlier_studies(self, study_uid: str) -> list[str]:
        return _earlier_studies(self.conn, study_uid)[1]

    def study_date(self, study_uid: str) -> str | None:
        return _study_date(self.conn, study_uid)

    def series_files(self, series_uid: str) -> list[Path]:
        return _series_files(self.conn, self.root, series_uid)

    def study_series(self, study_uid: str) -> dict[str, SeriesFiles]:
        return _study_series(self.conn, self.root, study_uid)

    def stored_results(self, study_uid: str) -> dict[str, Any] | None:
        path = self.root / RESULTS / study_uid / "results.json"
        return json.loads(path.read_text(encoding="utf-8")) if is_valid_uid(study_uid) and path.is_file() else None


def run_job(kind: str, storage_root: str, study_uid: str, payload: dict[str, Any],
            settings: QuantSettings, comparison: ComparisonSettings | None = None) -> dict[str, Any]:
    """Entry point in the worker process."""
    delay = float(os.environ.get(FAULT_SLEEP_ENV, "0") or 0)
    if delay > 0:
        time.sleep(delay)
    if kind == "quantify":
        return run_quantify(Path(storage_root), study_uid, payload, settings, comparison)
    raise JobError(f"unknown job kind {kind!r}")
