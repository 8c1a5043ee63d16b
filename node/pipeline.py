"""What a job does, run inside a worker process (never in the listener's process).

`quantify` runs the same study pipeline as `iodine-node process` on the series the completion
rules selected, and writes results under storage.root/results/<StudyInstanceUID>/.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pydicom

from node.compare.study import ComparisonSettings, compare_scans, ct_on_coarse_grid
from node.index import INDEX_FILE
from node.quant.study import QuantSettings, SeriesFiles, StudyError, process_study, write_study_outputs
from node.quant.suv import SuvError
from node.quant.volume import VolumeError
from node.uids import is_valid_uid

log = logging.getLogger(__name__)

# Fault injection for tests of crash recovery: a job sleeps this long before it works.
FAULT_SLEEP_ENV = "IODINE_NODE_FAULT_JOB_SLEEP_S"


class JobError(Exception):
    """A job that cannot complete, with a reason a person can act on."""


def _series_files(conn: sqlite3.Connection, root: Path, series_uid: str) -> list[Path]:
    rows = conn.execute("SELECT path FROM instances WHERE series_uid=? ORDER BY image_index, instance_number, path",
                        (series_uid,)).fetchall()
    return [root / r[0] for r in rows]


def run_quantify(storage_root: Path, study_uid: str, payload: dict[str, Any],
                 settings: QuantSettings, comparison: ComparisonSettings | None = None) -> dict[str, Any]:
    if not is_valid_uid(study_uid):
        raise JobError(f"invalid StudyInstanceUID {study_uid!r}")
    conn = sqlite3.connect(f"file:{storage_root / INDEX_FILE}?mode=ro", uri=True, timeout=30)
    try:
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
    finally:
        conn.close()
    try:
        results = process_study(series, settings)
    except (StudyError, SuvError, VolumeError) as exc:
        raise JobError(str(exc)) from None
    primary, doc = results[0]
    # A failed comparison is recorded in the results; it must never lose the quantification.
    try:
        section = compare_with_prior(storage_root, study_uid, primary, doc, series,
                                     comparison or ComparisonSettings())
    except Exception as exc:
        log.exception("study %s: comparison with the prior scan failed", study_uid)
        section = {"error": f"{type(exc).__name__}: {exc}"}
    if section is not None:
        doc["comparison"] = section
    out_dir = storage_root / "results" / study_uid
    written = write_study_outputs(out_dir, results, settings)
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
            objects.append({"kind": path.stem.split("-")[0], "path": str(path.relative_to(storage_root)),
                            "sop_instance_uid": str(ds.SOPInstanceUID), "sop_class_uid": str(ds.SOPClassUID)})
    return {"study_instance_uid": study_uid, "results_dir": str(out_dir.relative_to(storage_root)),
            "files": [str(p.relative_to(storage_root)) for p in written], "objects": objects, "series": summary}


def compare_with_prior(storage_root: Path, study_uid: str, result: Any, doc: dict[str, Any],
                       series: dict[str, SeriesFiles], settings: ComparisonSettings) -> dict[str, Any] | None:
    """Compare with the latest earlier quantified scan of the same patient in this node (within
    comparison.prior_window_days), or None when there is none."""
    conn = sqlite3.connect(f"file:{storage_root / INDEX_FILE}?mode=ro", uri=True, timeout=30)
    try:
        me = conn.execute("SELECT patient_id, issuer_of_patient_id FROM studies WHERE study_uid=?",
                          (study_uid,)).fetchone()
        if me is None or not me[0]:
            return None
        others = [r[0] for r in conn.execute(
            "SELECT study_uid FROM studies WHERE patient_id=? AND COALESCE(issuer_of_patient_id,'')=? AND study_uid<>?",
            (me[0], me[1] or "", study_uid))]
        reference = datetime.fromisoformat(doc["reference_datetime"])
        candidates = []
        for uid in others:
            path = storage_root / "results" / uid / "results.json"
            if not is_valid_uid(uid) or not path.is_file():
                continue
            prior = json.loads(path.read_text(encoding="utf-8"))
            when = datetime.fromisoformat(prior["reference_datetime"])
            if when < reference and (reference - when).total_seconds() <= settings.prior_window_days * 86400:
                candidates.append((when, prior))
        if not candidates:
            return None
        prior = max(candidates, key=lambda c: c[0])[1]
        prior_ct = _series_files(conn, storage_root, prior["ct_series_instance_uid"]) \
            if prior.get("ct_series_instance_uid") else []
        prior_pet = _series_files(conn, storage_root, prior["pet_series_instance_uid"])
    finally:
        conn.close()
    current_ct = series[doc["ct_series_instance_uid"]].paths if doc.get("ct_series_instance_uid") in series else []
    log.info("study %s: comparing with prior study %s", study_uid, prior["study_instance_uid"])
    return compare_scans(result, doc, prior,
                         ct_on_coarse_grid(prior_ct) if prior_ct else None,
                         ct_on_coarse_grid(current_ct) if current_ct else None,
                         pydicom.dcmread(prior_pet[0], stop_before_pixels=True) if prior_pet else pydicom.Dataset(),
                         settings)


def run_job(kind: str, storage_root: str, study_uid: str, payload: dict[str, Any],
            settings: QuantSettings, comparison: ComparisonSettings | None = None) -> dict[str, Any]:
    """Entry point in the worker process."""
    delay = float(os.environ.get(FAULT_SLEEP_ENV, "0") or 0)
    if delay > 0:
        time.sleep(delay)
    if kind == "quantify":
        return run_quantify(Path(storage_root), study_uid, payload, settings, comparison)
    raise JobError(f"unknown job kind {kind!r}")
