"""Retention: delete inputs and results older than configured, never anything with pending work.

Inputs of a study are deleted in three steps, so that no acknowledged instance is ever deleted and
a crash never brings a deleted study back:
1. in one durable transaction (store.studies.claim_for_deletion), re-check that nothing arrived
   since the study was chosen (last_received still before the cut-off) and that no job or delivery
   is pending, and mark it `deleting`. From then on the listener answers new instances of the study
   0xA700 (retry later) instead of storing them (studies.add_instance checks the state in its own
   transaction, so one of the two always sees the other);
2. delete the files (each unlink, then the folders, each fsynced);
3. delete the rows and mark the study `deleted`.
A crash after 1 or 2 leaves the study `deleting`: start-up completes the deletion before start-up
reconciliation looks for unindexed files, so reconciliation never re-indexes (resurrects) them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from node import results_store
from node.crashpoints import crash_point
from node.fsutil import fsync_dir
from node.store import Store, StudyState
from node.uids import is_valid_uid

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetentionReport:
    studies_deleted: int
    instances_deleted: int
    results_deleted: int
    kept_busy: int


CLAIM_NOTE = "inputs being deleted by storage.retention.inputs_days"
DELETED_NOTE = "inputs deleted by storage.retention.inputs_days"


def _claim(store: Store, study_uid: str, cutoff: float) -> list[str] | None:
    """Step 1: the study's instance paths, or None when it is busy or received something meanwhile."""
    return store.studies.claim_for_deletion(study_uid, cutoff, CLAIM_NOTE)


def _delete_files(root: Path, study_uid: str, paths: list[str], whole_folder: bool) -> None:
    """Step 2. Only the listed files, unless `whole_folder` (at start-up, when nothing can arrive)."""
    folders = set()
    for p in paths:
        (root / p).unlink(missing_ok=True)
        folders.add((root / p).parent)
    for folder in folders:
        if folder.is_dir():
            fsync_dir(folder)
    study_dir = root / "studies" / study_uid
    if whole_folder and study_dir.is_dir():
        shutil.rmtree(study_dir)
    else:
        for folder in [*folders, study_dir]:
            with contextlib.suppress(OSError):  # not empty: something else lives there; keep it
                folder.rmdir()
    fsync_dir(root / "studies")


def _drop_rows(store: Store, study_uid: str) -> None:
    """Step 3."""
    store.studies.drop_study_inputs(study_uid, DELETED_NOTE)


def finish_interrupted_deletions(store: Store, root: Path) -> int:
    """At start-up, before reconciliation: complete deletions a crash interrupted; returns how many."""
    uids = store.studies.studies_in_state(StudyState.DELETING)
    for uid in uids:
        paths = store.studies.study_instance_paths(uid)
        _delete_files(root, uid, paths, whole_folder=is_valid_uid(uid))
        _drop_rows(store, uid)
        log.warning("retention: completed the deletion of study %s interrupted by a restart", uid)
    return len(uids)


def _results_age_s(entry: Path, now: float) -> float:
    # The link is replaced at each publication: its own time is the results' age.
    return now - os.lstat(entry).st_mtime


def apply_retention(store: Store, root: Path, inputs_days: float | None, results_days: float | None,
                    now: float | None = None) -> RetentionReport:
    now = time.time() if now is None else now
    studies = instances = results = busy = 0
    if inputs_days is not None:
        cutoff = now - inputs_days * 86400
        for uid in store.studies.studies_received_before(cutoff):
            paths = _claim(store, uid, cutoff)
            if paths is None:
                busy += 1
                continue
            crash_point("retention-claimed")
            _delete_files(root, uid, paths, whole_folder=False)
            crash_point("retention-files-deleted")
            _drop_rows(store, uid)
            studies += 1
            instances += len(paths)
    if results_days is not None:
        results_root = root / results_store.RESULTS
        for entry in sorted(results_root.iterdir()) if results_root.is_dir() else []:
            if entry.name.startswith(".") or not is_valid_uid(entry.name):
                continue
            if _results_age_s(entry, now) <= results_days * 86400:
                continue
            # In one transaction with the busy check: no job can publish this study's results meanwhile.
            if not store.studies.delete_results_if_idle(entry.name, lambda uid=entry.name: results_store.delete_study(
                    root, uid)):
                busy += 1
                continue
            results += 1
    if studies or results:
        log.info("retention: deleted the inputs of %d studies (%d instances) and %d result folders; kept %d busy",
                 studies, instances, results, busy)
    return RetentionReport(studies, instances, results, busy)
