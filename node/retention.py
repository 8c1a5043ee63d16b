"""Retention: delete inputs and results older than configured, never anything with pending work."""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from node.index import PENDING, RUNNING, Index

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetentionReport:
    studies_deleted: int
    instances_deleted: int
    results_deleted: int
    kept_busy: int


def _busy(index: Index, study_uid: str) -> bool:
    """Pending or running job, or an undelivered result: keep everything of the study."""
    if index.query("SELECT 1 FROM jobs WHERE study_uid=? AND state IN (?,?)", (study_uid, PENDING, RUNNING)):
        return True
    return bool(index.query("SELECT 1 FROM outbox WHERE study_uid=? AND state=?", (study_uid, PENDING)))


def apply_retention(index: Index, root: Path, inputs_days: float | None, results_days: float | None,
                    now: float | None = None) -> RetentionReport:
    now = time.time() if now is None else now
    studies = instances = results = busy = 0
    if inputs_days is not None:
        cutoff = now - inputs_days * 86400
        for row in index.query("SELECT study_uid FROM studies WHERE last_received < ?", (cutoff,)):
            uid = row["study_uid"]
            if _busy(index, uid):
                busy += 1
                continue
            paths = [r["path"] for r in index.query("SELECT path FROM instances WHERE study_uid=?", (uid,))]
            with index.transaction() as c:
                c.execute("DELETE FROM instances WHERE study_uid=?", (uid,))
                c.execute("DELETE FROM series WHERE study_uid=?", (uid,))
                c.execute("UPDATE studies SET state='deleted', instance_count=0, note=? WHERE study_uid=?",
                          ("inputs deleted by storage.retention.inputs_days", uid))
            for p in paths:
                (root / p).unlink(missing_ok=True)
            study_dir = root / "studies" / uid
            if study_dir.is_dir():
                shutil.rmtree(study_dir, ignore_errors=True)
            studies += 1
            instances += len(paths)
    if results_days is not None:
        cutoff = now - results_days * 86400
        results_root = root / "results"
        for folder in sorted(results_root.iterdir()) if results_root.is_dir() else []:
            if folder.is_dir() and folder.stat().st_mtime < cutoff:
                if _busy(index, folder.name):
                    busy += 1
                    continue
                shutil.rmtree(folder, ignore_errors=True)
                results += 1
    if studies or results:
        log.info("retention: deleted the inputs of %d studies (%d instances) and %d result folders; kept %d busy",
                 studies, instances, results, busy)
    return RetentionReport(studies, instances, results, busy)
